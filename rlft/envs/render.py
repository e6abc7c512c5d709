"""Render settings of OGBench's pixel-observation (``visual-*``) environments on a CPU.

OGBench renders its 64x64 camera frames through MuJoCo's offscreen OpenGL context with a 4096x4096 shadow map and a
4x multisampled buffer. On a CPU (Mesa's llvmpipe through EGL) that costs far more than the frame itself:
``apply_render_quality(env, "fast")`` turns both off (``visual.quality.shadowsize = 0``, ``offsamples = 0``) in the
env's MJCF model before it is compiled, i.e. before the first ``reset``. The measured speed and the pixel difference
to the shipped frames: docs/results.md ("Rendering camera observations on the CPU"); ``scripts/bench_render.py``
re-measures both.

The frames then differ from OGBench's published visual datasets (no cast shadows, aliased edges), so a dataset
collected with ``fast`` records it in its provenance, and a policy trained on it should be evaluated with it too.
"""

from __future__ import annotations

from typing import Literal

import gymnasium

from rlft.errors import EnvError

RenderQuality = Literal["shipped", "fast"]

#: MJCF <visual><quality> attributes per setting (None: leave OGBench's own)
QUALITY: dict[str, dict[str, int] | None] = {"shipped": None, "fast": {"shadowsize": 0, "offsamples": 0}}


def apply_render_quality(env: gymnasium.Env, quality: RenderQuality) -> None:
    """Set the render quality of an OGBench manipulation env; must run before its first ``reset`` (the setting is
    compiled into the model)."""
    if quality not in QUALITY:
        raise EnvError(f"render quality must be one of {sorted(QUALITY)}, got {quality!r}")
    u = env.unwrapped
    if not hasattr(u, "build_mjcf_model"):
        raise EnvError(f"{type(u).__name__}: render quality applies to OGBench manipulation environments only")
    if getattr(u, "_model", None) is not None:
        raise EnvError("apply_render_quality: the env is already compiled (call it before the first reset)")
    attrs = QUALITY[quality]
    if attrs is None:
        return
    if getattr(u, "_mjcf_model", None) is None:
        u._mjcf_model = u.build_mjcf_model()  # reset() reuses a built model (OGBench's ManipSpaceEnv.reset)
    for k, v in attrs.items():
        setattr(u._mjcf_model.visual.quality, k, v)
