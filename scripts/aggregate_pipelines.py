"""Aggregate several ``rlft pipeline`` runs (e.g. 3 seeds) into one markdown table: mean (and per-seed values) of
success_once / success_at_end after each stage, wall time and peak memory if recorded.

    python scripts/aggregate_pipelines.py runs/pipeline-*-s0 runs/pipeline-*-s1 runs/pipeline-*-s2
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def main(dirs: list[str]) -> str:
    results = [json.loads((Path(d) / "pipeline_summary.json").read_text()) for d in dirs]
    by_stage: dict[str, list[dict]] = defaultdict(list)
    order: list[str] = []
    for res in results:
        for r in res["stages"]:
            if r["stage"] not in order:
                order.append(r["stage"])
            by_stage[r["stage"]].append(r)
    lines = [
        f"Runs: {', '.join(Path(d).name for d in dirs)}",
        "",
        "| stage | algo | success_once mean (per seed) | success_at_end mean | wall s (median) |",
        "|---|---|---|---|---|",
    ]
    for st in order:
        rows = by_stage[st]
        wall = float(np.median([r["wall_s"] for r in rows]))
        if "success_once" not in rows[0]:
            lines.append(f"| {st} | {rows[0]['algo']} | | | {wall:.0f} |")
            continue
        so = [r["success_once"] for r in rows]
        se = [r["success_at_end"] for r in rows]
        lines.append(
            f"| {st} | {rows[0]['algo']} | {np.mean(so):.3f} ({', '.join(f'{x:.2f}' for x in so)}) | "
            f"{np.mean(se):.3f} | {wall:.0f} |"
        )
    totals = [res["wall_s"] for res in results]
    lines += ["", f"Pipeline wall time: median {np.median(totals):.0f} s, max {max(totals):.0f} s."]
    peaks = [res.get("peak_rss_mb") for res in results if res.get("peak_rss_mb")]
    if peaks:
        lines.append(f"Peak memory (max RSS of the pipeline process and its children): max {max(peaks):.0f} MB.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
