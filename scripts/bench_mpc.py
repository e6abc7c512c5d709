"""Cost of one MPC planning step against the number of samples and the horizon (docs/results.md "The MPC expert").

    python scripts/bench_mpc.py [--env cube-single-singletask-v0] [--threads 1] [--repeats 20]

From the first state of episode seed 0 (after 10 warm-up plans), the median wall time of ``SamplingPlanner.plan``
(rollouts + cost), its physics steps per second, and the control steps per second it allows. Prints a markdown
table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from rlft.collect.mpc import MpcConfig, SamplingPlanner
from rlft.collect.mpc_cube import CubeTask
from rlft.envs import make_env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", default="cube-single-singletask-v0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    env = make_env(args.env)
    print("| samples | horizon (control steps) | plan ms (median) | physics steps/s | control steps/s |")
    print("|---|---|---|---|---|")
    for horizon in (4, 8, 16):
        for samples in (8, 24, 48, 96):
            cfg = MpcConfig(horizon=horizon, knots=min(3, horizon), samples=samples, threads=args.threads)
            env.reset(seed=0)
            task = CubeTask(env, cfg)
            planner = SamplingPlanner(task, cfg, np.random.default_rng(0))
            task.reset()
            for _ in range(10):
                planner.plan()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                planner.plan()
                times.append(time.perf_counter() - t0)
            ms = 1000 * statistics.median(times)
            physics = samples * horizon * task.substeps / (ms / 1000)
            print(f"| {samples} | {horizon} | {ms:.1f} | {physics:,.0f} | {1000 / ms:.1f} |")
    env.close()


if __name__ == "__main__":
    main()
