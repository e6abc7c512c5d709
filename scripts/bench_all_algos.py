"""Gradient updates per second of every registered algorithm, with its shipped default config, on one or more devices.

    python scripts/bench_all_algos.py [--devices cpu cuda] [--batch 256] [--threads 1] [--seconds 2] [--algos iql ...]

Setting (the default task's shapes): obs 28, action 5, chunk H = 5 (DQC: its longer backup chunk), batch 256, each
algorithm's own Config defaults (network widths, ensemble size, ``critic_impl: auto`` = loop on the CPU, batched on
CUDA; the policy kind, or the first supported one where the default is not); DSRL variants steer a default-sized
flow policy. Random but well-formed batches are made
beforehand and moved to the device, so only ``update`` is timed. Each cell: the median over 3 timings of as many
updates as fit in ``--seconds`` (after 3 untimed warm-up updates). Every update's metrics must be finite: the run
fails (exit 1) naming the algorithm and device otherwise, so this is also a smoke test of every algorithm on CUDA.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlft.algos import ALGORITHMS  # noqa: E402
from rlft.data.batch import ChunkBatch  # noqa: E402
from rlft.policies import build_policy  # noqa: E402
from rlft.policies.config import PolicyConfig  # noqa: E402
from rlft.utils import set_threads  # noqa: E402
from scripts.bench_updates import sync  # noqa: E402

OBS, ACT, H = 28, 5, 5


def policy_kind(cls) -> str:
    """The Config's default policy kind, or the first supported one where it is not (FQL/QC/DQC: flow)."""
    kind = cls.Config().policy.kind
    return kind if kind in cls.supported_policies else cls.supported_policies[0]


def build(name: str, device: torch.device, batch_size: int):
    torch.manual_seed(0)
    cls = ALGORITHMS[name]
    cfg = cls.Config(batch_size=batch_size)
    cfg.policy.kind = policy_kind(cls)
    extra = {}
    if cls.uses_base_policy:
        extra["base_policy"] = build_policy(PolicyConfig(kind="flow"), OBS, ACT, H).to(device)
    return cls(cfg, OBS, ACT, H, device=device, **extra)


def timed(alg, batches, device: torch.device, seconds: float) -> float:
    """Median updates/s of 3 timings; raises if a metric is not finite."""

    def step(i: int) -> None:
        metrics = alg.update(batches[i % len(batches)])
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"non-finite metrics {bad}")

    for i in range(3):
        step(i)
    sync(device)
    t = time.perf_counter()
    step(3)
    sync(device)
    n = max(3, int(seconds / max(time.perf_counter() - t, 1e-6)))
    rates = []
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for i in range(n):
            step(i)
        sync(device)
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", default=["cpu"], help="torch devices, e.g. cpu cuda")
    p.add_argument("--batch", type=int, default=256, help="batch size (DSRL-PPO: its rollout length)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the CPU rows (default 1)")
    p.add_argument("--seconds", type=float, default=2.0, help="target length of one timing")
    p.add_argument("--algos", nargs="*", default=None, help="algorithm names (default: all registered)")
    args = p.parse_args(argv)

    set_threads(args.threads)
    names = args.algos or sorted(ALGORITHMS)
    devices = [torch.device(d) for d in args.devices]
    rates: dict[tuple[str, str], float] = {}
    failed = []
    for name in names:
        for device in devices:
            try:
                alg = build(name, device, args.batch)
                g = torch.Generator().manual_seed(0)
                hz = alg.cfg.data_horizon(H)
                batches = [ChunkBatch.random(args.batch, OBS, hz, ACT, generator=g).to(device) for _ in range(4)]
                rates[name, str(device)] = timed(alg, batches, device, args.seconds)
                print(f"  {name} on {device}: {rates[name, str(device)]:.1f} updates/s", file=sys.stderr, flush=True)
            except Exception as e:  # report every failure, then fail the run
                failed.append(f"{name} on {device}: {type(e).__name__}: {e}")
                print(f"  FAILED {failed[-1]}", file=sys.stderr, flush=True)

    gpu = f", {torch.cuda.get_device_name()}" if any(d.type == "cuda" for d in devices) else ""
    print(
        f"\nupdates/s (median of 3 timings of ~{args.seconds:g} s); torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU thread(s){gpu}; batch {args.batch}, obs {OBS}, chunk {H}x{ACT}, "
        "default configs\n"
    )
    cols = [str(d) for d in devices]
    ratio = len(cols) == 2
    print("| algorithm | policy | critics | " + " | ".join(cols) + (f" | {cols[1]} / {cols[0]} |" if ratio else " |"))
    print("|---|---|---|" + "---|" * (len(cols) + ratio))
    for name in names:
        cfg = ALGORITHMS[name].Config()
        kind = policy_kind(ALGORITHMS[name])
        cells = [f"{rates[name, c]:.1f}" if (name, c) in rates else "failed" for c in cols]
        if ratio:
            a, b = rates.get((name, cols[0])), rates.get((name, cols[1]))
            cells.append(f"{b / a:.1f}x" if a and b else "—")
        print(f"| {name} | {kind} | {getattr(cfg, 'num_critics', '—')} | " + " | ".join(cells) + " |")
    for f in failed:
        print(f"FAILED: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
