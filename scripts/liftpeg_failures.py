"""Where a LiftPegUpright-v1 policy fails: every evaluation episode classified by the peg's state at its end.

    OMP_NUM_THREADS=1 python scripts/liftpeg_failures.py DEPLOYED_DIR [--num-episodes 100] [--seed 100000]
        [--out failures.json]

``DEPLOYED_DIR`` is a policy exported by ``rlft export`` (run open loop by ``rlft.deploy.PolicyRunner``, as
``rlft eval --deployed`` runs it, on the same episode seeds). ManiSkill's success test for the task
(``LiftPegUpright-v1.evaluate``): the peg's tilt (below) under 0.08 rad and its centre within 5 mm of
half its length (0.12 m) above the table, i.e. standing on the table. The state observation carries the peg's pose
(its last 7 dims: position, quaternion w-x-y-z). "Tilt" below is ManiSkill's uprightness error
``| |euler_XYZ[2]| - pi/2 |`` of the peg's orientation. Each failed episode falls into one class:

* ``near_miss``: standing on the table (centre within 5 mm of 0.12 m) but with a tilt of 0.08 rad or more;
* ``held_tilted``: still lifted at the end (centre > 0.15 m) and tilted;
* ``held_upright``: still lifted at the end, upright, not put down;
* ``lying``: lying on the table at the end (centre < 0.05 m);
* ``other``: anything else.

For every episode the script also records the tilt when the peg is first lifted above 0.2 m, which tells grasps
apart (``None``: never lifted that high; a ``lying`` episode with ``None`` was never lifted above 0.2 m, one with a
value was dropped).
Prints a JSON summary (docs/results.md, "Where the LiftPegUpright offline policy fails").
"""

from __future__ import annotations

import argparse
import json

import numpy as np

UPRIGHT_TOL, TABLE_TOL, HALF_LENGTH = 0.08, 0.005, 0.12  # ManiSkill's LiftPegUpright-v1.evaluate


def upright_error(quat_wxyz: np.ndarray) -> float:
    """ManiSkill's uprightness measure for the peg: ``| |euler_XYZ[2]| - pi/2 |`` (success needs < 0.08 rad)."""
    import torch
    from mani_skill.utils.geometry import rotation_conversions as rc

    q = torch.as_tensor(np.asarray(quat_wxyz, np.float32))[None]
    euler = rc.matrix_to_euler_angles(rc.quaternion_to_matrix(q), "XYZ")[0]
    return float(abs(abs(float(euler[2])) - np.pi / 2))


def classify(end_z: float, end_tilt: float, success: bool) -> str:
    if success:
        return "success"
    if abs(end_z - HALF_LENGTH) < TABLE_TOL:
        return "near_miss" if end_tilt >= UPRIGHT_TOL else "other"
    if end_z > 0.15:
        return "held_tilted" if end_tilt >= UPRIGHT_TOL else "held_upright"
    return "lying" if end_z < 0.05 else "other"


def run_episode(runner, env, seed: int) -> dict:
    runner.reset()
    obs, _ = env.reset(seed=seed)
    zs, tilts = [], []
    while True:
        obs, _, term, trunc, info = env.step(runner.step(obs))
        zs.append(float(obs[-5]))
        tilts.append(upright_error(obs[-4:]))
        if term or trunc:
            break
    zs, tilts = np.array(zs), np.array(tilts)
    lifted = np.flatnonzero(zs > 0.2)
    success = bool(info.get("success", False))
    return {
        "seed": seed,
        "class": classify(zs[-1], tilts[-1], success),
        "length": len(zs),
        "end_z": float(zs[-1]),
        "end_tilt": float(tilts[-1]),
        "tilt_at_lift": float(tilts[lifted[0]]) if len(lifted) else None,
    }


def summarize(episodes: list[dict]) -> dict:
    out: dict = {"num_episodes": len(episodes)}
    for c in ("success", "near_miss", "held_tilted", "held_upright", "lying", "other"):
        group = [e for e in episodes if e["class"] == c]
        lifts = [e["tilt_at_lift"] for e in group if e["tilt_at_lift"] is not None]
        out[c] = {"count": len(group)}
        if lifts:
            q10, q50, q90 = np.quantile(lifts, [0.1, 0.5, 0.9])
            out[c]["tilt_at_lift_q10_median_q90"] = [round(float(v), 3) for v in (q10, q50, q90)]
        if c != "success" and group:
            out[c]["end_tilt"] = [round(e["end_tilt"], 3) for e in group]
            out[c]["tilt_at_lift"] = [None if v is None else round(v, 3) for v in (e["tilt_at_lift"] for e in group)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("deployed", help="folder written by rlft export")
    ap.add_argument("--num-episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--out", default=None, help="also write every episode's record to this JSON file")
    args = ap.parse_args()

    from rlft.deploy.evaluate import deployed_episodes

    episodes = deployed_episodes(args.deployed, args.num_episodes, args.seed, "LiftPegUpright-v1", episode=run_episode)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(episodes, f, indent=1)
    print(json.dumps(summarize(episodes), indent=1))


if __name__ == "__main__":
    main()
