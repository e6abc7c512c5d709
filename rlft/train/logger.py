"""Metrics logging: a JSONL file per run (always), TensorBoard (always), Weights & Biases (``--run.track``).

``Logger.log(step, metrics)`` writes one JSON line ``{"step": .., "time": .., **metrics}`` and the same scalars to
TensorBoard. Metrics are accumulated between log points by ``MetricAverager`` so that a logged value is the mean over
the interval, not one noisy update.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path


class MetricAverager:
    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] += float(v)
            self.counts[k] += 1

    def pop(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        return out


class Logger:
    def __init__(self, run_dir: Path, use_tensorboard: bool = True, track: bool = False, project: str = "rlft",
                 run_name: str | None = None, config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._t0 = time.time()
        self._tb = None
        if use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        self.hooks: list = []
        """Callables ``hook(step, metrics)`` run after each log line (e.g. the live diagnosis of rlft.report)."""
        self._wandb = None
        if track:
            try:
                import wandb
            except ImportError as e:  # pragma: no cover - depends on optional extra
                from rlft.errors import ConfigError

                raise ConfigError("run.track=True needs wandb: pip install 'rlft[wandb]'") from e
            self._wandb = wandb.init(project=project, name=run_name, config=config, dir=str(self.run_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "time": round(time.time() - self._t0, 3), **clean}) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), int(step))
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=int(step))
        for hook in self.hooks:
            hook(int(step), metrics)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All JSONL records of a run (for reports and tests)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
