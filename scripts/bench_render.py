"""Frames per second of OGBench's visual cube scene rendered on the CPU, per render setting, and how much each
setting changes the frames.

    python scripts/bench_render.py [--env visual-cube-single-singletask-v0] [--frames 200] [--size 64]
                                   [--settings shipped,noshadow,fast] [--png OUT.png]

Each setting runs in its own process (the GL backend and llvmpipe's thread count are fixed when the process creates
its first context): it resets the env with seed 0, then times ``--frames`` env steps with random actions (physics +
one render per step, as collection and evaluation pay) after 5 untimed ones, and saves the frames of steps 0, 10, 20
... so the parent can compare them with the shipped renderer's (mean absolute pixel difference, 0-255). Settings:

* ``shipped``: OGBench as it comes (4096^2 shadow map, 4x MSAA offscreen buffer);
* ``noshadow``: ``vis.quality.shadowsize = 0`` (no shadow map) and ``offsamples = 0`` (no MSAA);
* ``fast``: ``noshadow`` plus llvmpipe on one thread (``LP_NUM_THREADS=1``), i.e. one core per rendering process;
* ``fast2``: ``noshadow`` with llvmpipe's default thread count;
* ``osmesa``: ``noshadow`` through OSMesa instead of EGL (if libOSMesa is installed);
* ``q=S:M[:N[:R]]``: shadow map S x S, M-sample MSAA, N slices/stacks per curved geom, R=1 no reflections.

Prints a markdown table: setting, frames/s (env step + render), render-only ms per frame, pixel difference to shipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SETTINGS = {
    "shipped": ({}, None),
    "noshadow": ({}, "fast"),
    "fast": ({"LP_NUM_THREADS": "1"}, "fast"),
    "fast2": ({}, "fast"),
    "osmesa": ({"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}, "fast"),
}


def child(env_id: str, frames: int, size: int, quality: str | None, out: str) -> None:
    """Run in a fresh process: time env steps with rendering, save every 10th frame."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rlft.envs.ogbench_env import make_ogbench_env
    from rlft.envs.render import apply_render_quality

    env = make_ogbench_env(env_id, width=size, height=size, allow_pixels=True)
    if quality and ":" in quality:  # explicit shadowsize:offsamples[:numslices[:reflectance off (0/1)]]
        vals = [int(x) for x in quality.split(":")]
        u = env.unwrapped
        u._mjcf_model = u.build_mjcf_model()
        q = u._mjcf_model.visual.quality
        q.shadowsize, q.offsamples = vals[0], vals[1]
        if len(vals) > 2:
            q.numslices = q.numstacks = vals[2]
        if len(vals) > 3 and vals[3]:
            for m in u._mjcf_model.find_all("material"):
                m.reflectance = 0
    elif quality:
        apply_render_quality(env, quality)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
    kept, render_s = [obs.copy()], 0.0
    u = env.unwrapped
    t0 = time.perf_counter()
    for i in range(frames):
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        if i % 10 == 9:
            kept.append(obs.copy())
    total = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(frames // 4):
        u.render()
    render_s = (time.perf_counter() - t1) / max(1, frames // 4)
    np.save(out, np.stack(kept))
    Path(out).with_suffix(".json").write_text(json.dumps({"fps": frames / total, "render_ms": render_s * 1e3}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="visual-cube-single-singletask-v0")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--settings", default="shipped,noshadow,fast")
    ap.add_argument("--png", default=None, help="save the shipped and every setting's first frames side by side")
    ap.add_argument("--child", nargs=2, metavar=("QUALITY", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.env, args.frames, args.size, None if args.child[0] == "-" else args.child[0], args.child[1])
        return
    import tempfile

    rows, frames = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings.split(","):
            env_vars, quality = SETTINGS[name] if name in SETTINGS else ({}, name.removeprefix("q="))
            out = os.path.join(tmp, f"{name}.npy")
            env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", **env_vars}
            cmd = [sys.executable, __file__, "--env", args.env, "--frames", str(args.frames), "--size", str(args.size)]
            r = subprocess.run([*cmd, "--child", quality or "-", out], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                rows.append((name, "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:100], "", ""))
                continue
            res = json.loads(Path(out).with_suffix(".json").read_text())
            frames[name] = np.load(out)
            rows.append((name, f"{res['fps']:.1f}", f"{res['render_ms']:.1f}", ""))
    ref = frames.get("shipped")
    print(
        f"| setting ({args.env}, {args.size}x{args.size}) | env steps/s with a render | render ms | |Δpixel| vs shipped |"
    )
    print("|---|---|---|---|")
    for name, fps, ms, _ in rows:
        diff = ""
        if ref is not None and name in frames:
            d = np.abs(frames[name].astype(np.int16) - ref.astype(np.int16))
            diff = f"mean {d.mean():.2f}, p99 {np.percentile(d, 99):.0f}"
        print(f"| {name} | {fps} | {ms} | {diff} |")
    if args.png and frames:
        from PIL import Image

        strip = np.concatenate([np.concatenate(list(f[:4]), 0) for f in frames.values()], 1)
        Image.fromarray(strip).resize((strip.shape[1] * 3, strip.shape[0] * 3), Image.NEAREST).save(args.png)
        print(f"frames (columns: {', '.join(frames)}) -> {args.png}")


if __name__ == "__main__":
    main()
