"""Gradient updates per second of SAC/RLPD and IQL, critic ensemble 'loop' vs 'batched' (and torch.compile).

    python scripts/bench_updates.py [--threads 1] [--repeats 5] [--updates 30] [--no-compile] [--device cpu]

Setting (matches cube-single with 5-step chunks): obs 28, action 5, chunks H = 1 and H = 5, batch 256, networks
(256, 256, 256) with LayerNorm; SAC with 10 critics and a random 2-of-10 target min (RLPD), IQL with 2 critics + V.
SAC runs with its default config (actor and temperature stepped on every 4th update = once per utd_ratio, as
RLPD) and with the actor on every update. Each row: ``--repeats`` timings of ``--updates`` consecutive updates
(after ``--warmup`` untimed ones), reported as the median updates/s and ms/update. Batches are generated beforehand,
so only the update is timed. Prints a markdown table.

Measured (2-core AMD EPYC VM, 1 thread, torch 2.13 CPU, another job busy on the other core): SAC 10 critics loop
~19-20 updates/s (default actor delay) / ~13.5 (actor every update), batched ~10-15% slower, torch.compile of the
batched critics ~= loop; IQL ~43 updates/s; chunk 1x5 vs 5x5 makes no difference (only the first layer grows).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlft.algos import ALGORITHMS  # noqa: E402
from rlft.data.batch import ChunkBatch  # noqa: E402
from rlft.policies.config import PolicyConfig  # noqa: E402
from rlft.utils import resolve_device, set_threads  # noqa: E402

OBS, ACT, BATCH, HIDDEN = 28, 5, 256, (256, 256, 256)


def build(algo: str, impl: str, horizon: int, policy_kind: str, device: torch.device, **overrides):
    torch.manual_seed(0)
    cls = ALGORITHMS[algo]
    cfg = dataclasses.replace(
        cls.Config(),
        critic_impl=impl,
        critic_hidden_dims=HIDDEN,
        batch_size=BATCH,
        policy=PolicyConfig(kind=policy_kind, hidden_dims=HIDDEN),
        **overrides,
    )
    return cls(cfg, OBS, ACT, horizon, device=device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(alg, horizon: int, device: torch.device, updates: int, repeats: int, warmup: int) -> tuple[float, float]:
    """-> (median updates/s, warm-up seconds)."""
    g = torch.Generator().manual_seed(0)
    batches = [ChunkBatch.random(BATCH, OBS, horizon, ACT, generator=g).to(device) for _ in range(8)]
    t0 = time.perf_counter()
    for i in range(warmup):
        alg.update(batches[i % len(batches)])
    sync(device)
    warm_s = time.perf_counter() - t0
    rates = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for i in range(updates):
            alg.update(batches[i % len(batches)])
        sync(device)
        rates.append(updates / (time.perf_counter() - t))
    return statistics.median(rates), warm_s


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--updates", type=int, default=30, help="updates per timed repeat")
    p.add_argument("--warmup", type=int, default=5, help="untimed updates first (compilation happens here)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = p.parse_args(argv)

    set_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    # (algo, policy kind, config overrides, note); SAC's default steps the actor once per utd_ratio (4) updates
    setups = (
        ("sac", "gaussian", {}, "actor every 4th update (default)"),
        ("sac", "gaussian", {"actor_update_every": 1}, "actor every update"),
        ("iql", "gaussian", {}, ""),
        ("iql", "flow", {}, ""),
    )
    for algo, kind, overrides, note in setups:
        for horizon in (1, 5):
            for impl in ("loop", "batched", "batched+compile"):
                if impl == "batched+compile" and (args.no_compile or algo != "sac" or overrides):
                    continue
                alg = build(algo, impl.split("+")[0], horizon, kind, device, **overrides)
                if impl.endswith("compile"):
                    alg.critic.compile()
                    alg.target_critic.compile()
                try:
                    rate, warm_s = bench(alg, horizon, device, args.updates, args.repeats, args.warmup)
                except Exception as e:  # torch.compile may be unavailable (no C++ compiler, ...)
                    print(f"{algo}/{impl} H={horizon}: failed: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                critics = alg.cfg.num_critics
                rows.append((algo, kind, critics, f"{horizon}x{ACT}", impl, note, rate, 1000.0 / rate, warm_s))
                print(f"  {algo} {kind} H={horizon} {impl}: {rate:.1f} updates/s", file=sys.stderr, flush=True)

    print(
        f"\nupdates/s, median of {args.repeats} x {args.updates} updates; device {device}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s); batch {BATCH}, obs {OBS}, "
        f"MLPs {HIDDEN} + LayerNorm\n"
    )
    print("| algo | policy | critics | chunk | critic impl | note | updates/s | ms/update | warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for algo, kind, n, chunk, impl, note, rate, ms, warm_s in rows:
        print(f"| {algo} | {kind} | {n} | {chunk} | {impl} | {note} | {rate:.1f} | {ms:.2f} | {warm_s:.1f} |")


if __name__ == "__main__":
    main()
