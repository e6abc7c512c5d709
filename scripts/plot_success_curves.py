"""Evaluation success against env steps for several methods, each over several seeds, in one figure.

    python scripts/plot_success_curves.py --out curves.png --title "LiftPegUpright-v1" \\
        --method "residual SAC" RUN_S0 RUN_S1 RUN_S2 --method "online IQL" RUN_S0 RUN_S1 RUN_S2 \\
        [--start 0.69 0.77 0.78] [--metric eval/success_once]

Every ``RUN`` is an ``rlft train`` run directory (its ``metrics.jsonl``). Each method is drawn as the mean over its
runs of their k-th evaluations (runs of one method evaluate every N env steps; the mean stops at the shortest run),
with every run as a thin line of the same colour. ``--start`` adds the
starting policy's success per seed (e.g. the offline stage's) at step 0 of every method's runs, in the order the runs
are given. Docs: docs/results.md, "Four online methods from the pipeline's offline policies".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def curve(run: Path, metric: str, start: float | None) -> tuple[np.ndarray, np.ndarray]:
    """One run's (steps, values) of ``metric``, with ``start`` prepended at step 0 when given. A missing or corrupt
    ``metrics.jsonl``, or a run that never logged ``metric``, exits with one message naming the run."""
    from rlft.report.runs import Metrics, ReportError, read_metrics_file

    try:
        steps, values = Metrics(read_metrics_file(run / "metrics.jsonl")).series(metric)
    except ReportError as e:
        raise SystemExit(str(e)) from None
    if len(steps) == 0:
        raise SystemExit(f"{run}: no {metric!r} in its metrics.jsonl (was the run evaluated?)")
    if start is not None:
        steps, values = np.r_[0, steps], np.r_[start, values]
    return steps, values


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The mean over runs of their k-th evaluations, k up to the shortest run: (mean step, mean value). Runs of one
    method evaluate every N env steps; with chunked actions their steps differ by less than a chunk."""
    n = min(len(s) for s, _ in curves)
    return np.mean([s[:n] for s, _ in curves], axis=0), np.mean([v[:n] for _, v in curves], axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", nargs="+", action="append", required=True, metavar=("LABEL", "RUN"))
    ap.add_argument("--start", nargs="*", type=float, default=None)
    ap.add_argument("--metric", default="eval/success_once")
    ap.add_argument("--title", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    for label, *runs in args.method:  # every argument is checked before anything is read or drawn
        if not runs:
            raise SystemExit(f"--method {label!r}: give at least one run directory after the label")
        if args.start and len(args.start) != len(runs):
            raise SystemExit(f"--start has {len(args.start)} values but method {label!r} has {len(runs)} runs")
    methods = [
        (label, [curve(Path(r), args.metric, s) for r, s in zip(runs, args.start or [None] * len(runs))])
        for label, *runs in args.method
    ]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlft.utils import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, curves) in enumerate(methods):
        color = f"C{i}"
        for steps, values in curves:
            ax.plot(steps, values, color=color, alpha=0.3, lw=1)
        steps, mean = mean_curve(curves)
        ax.plot(steps, mean, color=color, lw=2.2, marker="o", label=f"{label} (mean of {len(curves)})")
    ax.set_xlabel("env steps")
    ax.set_ylabel(args.metric)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(args.title)
    fig.tight_layout()
    with atomic_path(args.out) as tmp:  # no half-written figure if drawing fails
        fig.savefig(tmp, format="png", dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
