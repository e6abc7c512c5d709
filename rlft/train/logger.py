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

    def state_dict(self) -> dict:
        """The partial sums since the last log point (a checkpoint between log points keeps them)."""
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sums.clear()
        self.counts.clear()
        self.sums.update({str(k): float(v) for k, v in state["sums"].items()})
        self.counts.update({str(k): int(v) for k, v in state["counts"].items()})

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
    def __init__(
        self,
        run_dir: Path,
        use_tensorboard: bool = True,
        track: bool = False,
        project: str = "rlft",
        run_name: str | None = None,
        group: str | None = None,
        config: dict | None = None,
        resume_step: int | None = None,
        elapsed_s: float = 0.0,
    ):
        """``resume_step``: continue a run whose checkpoint was written at this step -- records the interrupted
        process logged after it are dropped from metrics.jsonl and TensorBoard (the resumed run logs them again), and
        ``time`` continues from ``elapsed_s``, the run's wall time at the checkpoint."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_metrics(self.run_dir, resume_step)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._t0 = time.time() - float(elapsed_s)
        self._tb = None
        if use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else int(resume_step) + 1
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        self.hooks: list = []
        """Callables ``hook(step, metrics)`` run after each log line (e.g. the live diagnosis of rlft.report)."""
        self._wandb = None
        if track:
            try:
                import wandb
            except ImportError as e:  # pragma: no cover - depends on optional extra
                from rlft.errors import ConfigError

                raise ConfigError("run.track=True needs wandb: pip install 'rlft[wandb]'") from e
            self._wandb = wandb.init(project=project, name=run_name, group=group, config=config, dir=str(self.run_dir))

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


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Keep only the records of ``run_dir``/metrics.jsonl up to ``step`` (atomically); a torn last line (a process
    killed mid-write) is dropped too."""
    from rlft.utils import atomic_write_text

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All JSONL records of a run (for reports and tests)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
