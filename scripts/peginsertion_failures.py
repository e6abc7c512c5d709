"""Where a PegInsertionSide-v1 policy fails: every evaluation episode classified by how far it got.

    OMP_NUM_THREADS=1 python scripts/peginsertion_failures.py DEPLOYED_DIR [--num-episodes 100] [--seed 100000]
        [--max-episode-steps N] [--out failures.json]

``DEPLOYED_DIR`` is a policy exported by ``rlft export`` (run open loop by ``rlft.deploy.PolicyRunner``, as
``rlft eval --deployed`` runs it, on the same episode seeds). ManiSkill's success test for the task
(``PegInsertionSide-v1.has_peg_inserted``): the peg head's position in the hole's frame (x along the hole) has
``x >= -0.015`` and ``|y|, |z| <= r``, with ``r`` the hole's radius (the peg's half width plus 3 mm of clearance).
Each episode, judged over all its steps, falls into the first class that fits:

* ``success``: ManiSkill's test held at the end (rlft's episodes end at success);
* ``never_grasped``: ManiSkill's ``is_grasping(peg, max_angle=20)`` (the task's dense reward's grasp test) never held;
* ``not_lined_up``: grasped, but the head never came within the hole's radius in y and z while within 10 cm of its
  mouth (``x >= -0.1``);
* ``lined_up``: lined up at some step, but not inserted at the end (``max_x`` says how deep it got).

For every episode it records ``yz_margin``: the least ``max(|y|, |z|) - r`` over the steps within 10 cm of the mouth
(metres; <= 0 is lined up), and ``max_x``: the deepest the head got (metres in the hole's frame; ``None`` when never
within 10 cm), and ``min_dist`` / ``end_dist``: the head's least and last distance from the hole's centre (metres).
Prints a JSON summary (docs/results.md, "PegInsertionSide-v1").
"""

from __future__ import annotations

import argparse
import json

import numpy as np

MOUTH = -0.1  # "near the hole": within 10 cm of its mouth along the hole's axis, metres in the hole's frame


def head_in_hole(base) -> tuple[np.ndarray, float]:
    """The peg head's position in the hole's frame and the hole's radius, for env 0 of ManiSkill's env ``base``."""
    _, pos = base.has_peg_inserted()
    return pos[0].cpu().numpy().astype(float), float(base.box_hole_radii[0])


def classify(success: bool, grasped: bool, yz_margin: float | None) -> str:
    if success:
        return "success"
    if not grasped:
        return "never_grasped"
    if yz_margin is None or yz_margin > 0:
        return "not_lined_up"
    return "lined_up"


def run_episode(runner, env, seed: int) -> dict:
    base = env.unwrapped
    runner.reset()
    obs, _ = env.reset(seed=seed)
    grasped, margins, xs, dists = False, [], [], []
    while True:
        obs, _, term, trunc, info = env.step(runner.step(obs))
        grasped |= bool(base.agent.is_grasping(base.peg, max_angle=20)[0])
        (x, y, z), r = head_in_hole(base)
        dists.append(float(np.linalg.norm([x, y, z])))
        if x >= MOUTH:
            margins.append(max(abs(y), abs(z)) - r)
            xs.append(x)
        if term or trunc:
            break
    success = bool(info.get("success", False))
    yz_margin = float(min(margins)) if margins else None
    return {
        "seed": seed,
        "class": classify(success, grasped, yz_margin),
        "length": int(base.elapsed_steps[0]),
        "grasped": grasped,
        "yz_margin": yz_margin,
        "max_x": float(max(xs)) if xs else None,
        "min_dist": min(dists),
        "end_dist": dists[-1],
    }


def _mm_quantiles(values: list[float]) -> list[float]:
    """10 %, 50 % and 90 % quantiles of lengths in metres, in millimetres to 0.1 mm."""
    return [round(1000 * float(v), 1) for v in np.quantile(values, [0.1, 0.5, 0.9])]


def summarize(episodes: list[dict]) -> dict:
    out: dict = {"num_episodes": len(episodes)}
    for c in ("success", "never_grasped", "not_lined_up", "lined_up"):
        group = [e for e in episodes if e["class"] == c]
        out[c] = {"count": len(group)}
        for key in ("yz_margin", "max_x", "min_dist", "end_dist"):
            values = [e[key] for e in group if e[key] is not None]
            if values:
                out[c][f"{key}_mm_q10_median_q90"] = _mm_quantiles(values)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("deployed", help="folder written by rlft export")
    ap.add_argument("--num-episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--max-episode-steps", type=int, default=None, help="episode limit (default: rlft's, 200)")
    ap.add_argument("--out", default=None, help="also write every episode's record to this JSON file")
    args = ap.parse_args()

    from rlft.deploy.evaluate import deployed_episodes

    episodes = deployed_episodes(
        args.deployed, args.num_episodes, args.seed, "PegInsertionSide-v1", args.max_episode_steps, episode=run_episode
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(episodes, f, indent=1)
    print(json.dumps(summarize(episodes), indent=1))


if __name__ == "__main__":
    main()
