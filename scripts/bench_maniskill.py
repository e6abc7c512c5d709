"""ManiSkill3 on the CPU: env steps/s (1 process; AsyncVectorEnv with N processes) and motion-planned demo cost.

    OMP_NUM_THREADS=1 python scripts/bench_maniskill.py [--env-id LiftPegUpright-v1] [--steps 3000] [--demos 20]

Prints one JSON object (docs/results.md, "Simulator speed, demonstration cost, CI cost"). Random actions in
[-1, 1], state observations, pd_ee_delta_pose, rlft's time limit (episodes reset when they end).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def single_process(env_id: str, steps: int) -> float:
    from rlft.envs import make_env

    env = make_env(env_id, seed=0)
    env.step(env.action_space.sample())  # warm up
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    dt = time.perf_counter() - t0
    env.close()
    return steps / dt


def vector(env_id: str, steps: int, n: int) -> float:
    from rlft.envs import make_vector_env

    venv = make_vector_env(env_id, n, backend="async")
    venv.reset(seed=0)
    venv.step(venv.action_space.sample())
    t0 = time.perf_counter()
    for _ in range(steps // n):
        venv.step(venv.action_space.sample())  # gymnasium's vector env auto-resets finished envs
    dt = time.perf_counter() - t0
    venv.close()
    return (steps // n) * n / dt


def demos(env_id: str, n: int) -> dict:
    from rlft.envs.maniskill_demos import converted_episodes, plan_and_convert, to_rlft_episode
    from rlft.envs.maniskill_env import default_max_episode_steps

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path, stats = plan_and_convert(env_id, list(range(n)), tmp, tag="bench")
        wall = time.perf_counter() - t0
        eps = converted_episodes(path) if path is not None else {}
    cut = [to_rlft_episode(eps[s["seed"]], default_max_episode_steps(env_id)) for s in stats if s["seed"] in eps]
    ok = [e for e, why in cut if why == "ok"]
    return {
        "attempts": n,
        "planner_success": float(np.mean([s["plan_success"] for s in stats])),
        "converted_success": len(ok) / n,
        "plan_s_per_demo": float(np.mean([s["plan_seconds"] for s in stats])),
        "convert_s_per_demo": float(np.mean([s["convert_seconds"] for s in stats])),
        "wall_s_per_demo_incl_setup": wall / n,
        "success_step_min_max": [min(len(e) for e in ok), max(len(e) for e in ok)] if ok else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env-id", default="LiftPegUpright-v1")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--demos", type=int, default=20)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    res = {"env_id": a.env_id, "steps": a.steps}
    res["steps_per_s_1proc"] = single_process(a.env_id, a.steps)
    res[f"steps_per_s_async_{a.procs}proc"] = vector(a.env_id, a.steps, a.procs)
    if a.demos:
        res["demos"] = demos(a.env_id, a.demos)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
