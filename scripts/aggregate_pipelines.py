"""The table over seeds of ``rlft pipeline`` runs made separately (``rlft pipeline --seeds`` writes it itself): per
stage the mean success with a 95 % interval over seeds and each seed's value, each seed's deployed stage, wall time
and peak memory (rlft.train.multiseed).

    python scripts/aggregate_pipelines.py runs/pipeline-*-s0 runs/pipeline-*-s1 runs/pipeline-*-s2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlft.train.multiseed import results_markdown, seeds_summary


def main(dirs: list[str]) -> str:
    results = [json.loads((Path(d) / "pipeline_summary.json").read_text()) for d in dirs]
    return results_markdown(seeds_summary(Path(dirs[0]).parent, results))


if __name__ == "__main__":
    print(main(sys.argv[1:]))
