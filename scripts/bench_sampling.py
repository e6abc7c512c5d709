"""Milliseconds per sampled batch of ``ChunkDataset.sample`` (the offline data path of every update).

    python scripts/bench_sampling.py [--batch 256] [--repeats 5] [--samples 300]

Setting: 50 episodes of 200 steps, obs 28, action 5 (cube-single's sizes), chunks of 5, gamma 0.99. Each repeat
times ``--samples`` consecutive ``sample(batch)`` calls after 20 untimed ones; prints every repeat and the median.
The offline loop samples one batch per update, so this should stay far below an update's time (bench_updates.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlft.data.dataset import ChunkDataset  # noqa: E402
from rlft.data.episodes import Episode  # noqa: E402


def dataset(num_episodes: int = 50, length: int = 200) -> ChunkDataset:
    """Random episodes of cube-single's sizes, each ending in a truncation."""
    rng = np.random.default_rng(0)
    eps = [
        Episode(
            obs=rng.normal(size=(length + 1, 28)).astype(np.float32),
            actions=rng.uniform(-1, 1, (length, 5)).astype(np.float32),
            rewards=-np.ones(length, np.float32),
            terminated=np.zeros(length, bool),
            truncated=np.arange(length) == length - 1,
            success=np.zeros(length, bool),
        )
        for _ in range(num_episodes)
    ]
    return ChunkDataset(eps, act_horizon=5, gamma=0.99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds, g = dataset(), torch.Generator().manual_seed(0)
    for _ in range(20):
        ds.sample(args.batch, g)
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.samples):
            ds.sample(args.batch, g)
        times.append((time.perf_counter() - t0) / args.samples * 1e3)
        print(f"repeat {r}: {times[-1]:.3f} ms per batch of {args.batch}")
    print(f"median: {statistics.median(times):.3f} ms per batch of {args.batch}")


if __name__ == "__main__":
    main()
