"""Reading run directories for reports: metrics, config, summary, videos; pipelines expanded into their stages.

A *run directory* (``rlft train``) holds ``config.yaml``, ``metrics.jsonl`` (one JSON object per log line: ``step``,
``time`` and metrics), ``summary.json`` (at the end), ``checkpoints/`` and optionally ``videos/``. A *pipeline
directory* (``rlft pipeline``) holds ``pipeline.yaml``, ``pipeline_summary.json`` and one run directory per stage; it
is expanded into its stages. Any other directory whose sub-directories are run directories (an ``rlft sweep``) is
expanded into those runs, grouped by grid point (the run name without its ``,s<seed>`` suffix) when a point has
several seeds.

Everything a user can get wrong (a missing directory, no ``metrics.jsonl``, a corrupt line) raises ``ReportError``
naming the file (and line).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from rlft.errors import RlftError


class ReportError(RlftError):
    """A run directory cannot be read for a report (missing, no metrics, corrupt file)."""


# ----------------------------------------------------------------------------------------------------------------
# metric series
# ----------------------------------------------------------------------------------------------------------------
def _to_float(v: Any) -> float | None:
    """JSON value -> float. The Logger writes non-finite numbers as strings ('nan', 'inf', '-inf')."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


class Metrics:
    """Metric series of one run, built from log records ``{"step": s, "time": t, name: value, ...}``.

    ``series(name)`` returns ``(steps, values)`` over the records that hold ``name`` (records logged at the same step
    -- training metrics and evaluation results are separate log lines -- stay separate points). Records can be
    appended one at a time (``add``), which is how the live diagnosis in the runner uses it.
    """

    def __init__(self, records: list[dict] | None = None):
        self._steps: dict[str, list[int]] = {}
        self._values: dict[str, list[float]] = {}
        self.n_records = 0
        self.last_step = 0
        for r in records or []:
            self.add(int(r.get("step", 0)), r)

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        self.n_records += 1
        self.last_step = max(self.last_step, int(step))
        for k, v in metrics.items():
            if k in ("step", "time"):
                continue
            f = _to_float(v)
            if f is None:
                continue
            self._steps.setdefault(k, []).append(int(step))
            self._values.setdefault(k, []).append(f)

    @property
    def names(self) -> list[str]:
        return list(self._values)

    def has(self, name: str) -> bool:
        return name in self._values

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._values:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.asarray(self._steps[name], dtype=np.int64), np.asarray(self._values[name], dtype=np.float64)

    def find(self, *candidates: str) -> str | None:
        """The first candidate name that was logged. A candidate ``*suffix`` matches any logged name ending in
        ``suffix`` (``*weights_max`` matches ``actor/iql_weights_max`` and ``actor/awr_weights_max``)."""
        for c in candidates:
            if c.startswith("*"):
                suffix = c[1:]
                hits = sorted(n for n in self._values if n.endswith(suffix))
                if hits:
                    return hits[0]
            elif c in self._values:
                return c
        return None


# ----------------------------------------------------------------------------------------------------------------
# run directories
# ----------------------------------------------------------------------------------------------------------------
def read_metrics_file(path: Path) -> list[dict]:
    """All records of a ``metrics.jsonl``; a corrupt line raises ReportError naming the file and line.

    A truncated *last* line (a run killed while writing) is tolerated and dropped: every other line must parse.
    """
    if not path.is_file():
        raise ReportError(f"{path}: no metrics file (is {path.parent} a run directory of rlft train?)")
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) and not line.rstrip().endswith("}"):
                break  # partial final line of an interrupted run
            raise ReportError(f"{path}:{i}: corrupt JSON line ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict) or "step" not in rec:
            raise ReportError(f"{path}:{i}: expected a JSON object with a 'step' field, got {line[:80]!r}")
        records.append(rec)
    return records


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: corrupt JSON ({e.msg} at line {e.lineno})") from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ReportError(f"{path}: corrupt YAML ({e})") from None
    return data if isinstance(data, dict) else {}


def _policy_meta(run_dir: Path) -> dict:
    """obs_dim/action_dim/act_horizon and extra metadata from the run's saved policy (safetensors header)."""
    for name in ("policy_final.safetensors", "policy_best.safetensors"):
        p = run_dir / "checkpoints" / name
        if p.is_file():
            try:
                from safetensors import safe_open

                with safe_open(str(p), "pt") as f:
                    meta = f.metadata() or {}
                out = json.loads(meta.get("kwargs", "{}"))
                out["policy_class"] = meta.get("class")
                return out
            except Exception:  # a report never fails on an unreadable checkpoint; the dims are optional
                return {}
    return {}


@dataclasses.dataclass
class RunData:
    """Everything a report needs about one training run (a stage of a pipeline or a standalone run)."""

    name: str
    """Display name: the directory name, or '<pipeline>/<stage>'."""
    path: Path
    records: list[dict]
    config: dict
    summary: dict | None
    policy_meta: dict
    group: str
    """Runs with the same group are overlaid in comparison pages (the stage name for pipeline stages)."""
    pipeline: str | None = None
    """Name of the pipeline directory this run is a stage of."""
    start_success: float | None = None
    """Final eval/success_once of the policy this run started from (previous stage, or the run that saved
    ``init_policy``), when known."""
    start_source: str | None = None

    @property
    def metrics(self) -> Metrics:
        if not hasattr(self, "_metrics"):
            self._metrics = Metrics(self.records)
        return self._metrics

    @property
    def algo(self) -> str:
        return str(self.config.get("algo", (self.summary or {}).get("algo", "?")))

    @property
    def mode(self) -> str:
        return str(self.config.get("mode", (self.summary or {}).get("mode", "?")))

    def final_eval(self) -> dict[str, float]:
        """The last evaluation (summary.json's ``final``, else the last record holding eval/success_once)."""
        if self.summary and isinstance(self.summary.get("final"), dict):
            return {k: float(v) for k, v in self.summary["final"].items() if _to_float(v) is not None}
        for r in reversed(self.records):
            if "eval/success_once" in r:
                return {k: f for k, v in r.items() if k.startswith("eval/") and (f := _to_float(v)) is not None}
        return {}

    def videos(self) -> list[Path]:
        d = self.path / "videos"
        return sorted(d.glob("*.mp4")) + sorted(d.glob("*.gif")) if d.is_dir() else []

    def context(self) -> dict:
        """What the diagnosis rules may use besides the metrics (see rlft.report.diagnose.Context)."""
        env = self.config.get("env", {}) or {}
        return {
            "algo": self.algo,
            "mode": self.mode,
            "algo_cfg": self.config.get("algo_cfg", {}) or {},
            "act_horizon": self.policy_meta.get("act_horizon", env.get("act_horizon")),
            "action_dim": self.policy_meta.get("action_dim"),
            "gamma": env.get("gamma"),
            "reward_range": _reward_range_of_run(self.path),
            "init_policy": self.config.get("init_policy"),
            "start_success": self.start_success,
            "start_source": self.start_source,
        }


def _reward_range_of_run(run_dir: Path) -> list[float] | None:
    """``[r_min, r_max]`` of the rewards a run trained on (its summary.json, written by rlft train), or None."""
    s = _read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else None
    rr = s.get("reward_range") if isinstance(s, dict) else None
    if isinstance(rr, list) and len(rr) == 2 and all(_to_float(v) is not None for v in rr):
        return [float(rr[0]), float(rr[1])]
    return None


def _final_success_of_run(run_dir: Path) -> float | None:
    s = _read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else None
    if s and isinstance(s.get("final"), dict) and _to_float(s["final"].get("eval/success_once")) is not None:
        return float(s["final"]["eval/success_once"])
    return None


def load_run(path: str | Path, name: str | None = None, group: str = "runs", pipeline: str | None = None) -> RunData:
    p = Path(path)
    if not p.exists():
        raise ReportError(f"{p}: no such run directory")
    if not p.is_dir():
        raise ReportError(f"{p}: not a directory (pass a run directory of rlft train or rlft pipeline)")
    records = read_metrics_file(p / "metrics.jsonl")
    config = _read_yaml(p / "config.yaml")
    meta = _policy_meta(p)
    if "action_dim" not in meta and config.get("dataset"):  # no checkpoint: the dataset's sidecar knows the dims
        side = Path(str(config["dataset"])).with_suffix(".json")
        try:
            info = json.loads(side.read_text()).get("env_info", {}) if side.is_file() else {}
        except (json.JSONDecodeError, OSError):
            info = {}
        meta.update({k: info[k] for k in ("obs_dim", "action_dim") if isinstance(info.get(k), int)})
    run = RunData(
        name=name or p.name,
        path=p,
        records=records,
        config=config,
        summary=_read_json(p / "summary.json"),
        policy_meta=meta,
        group=group,
        pipeline=pipeline,
    )
    init = config.get("init_policy")
    if init:  # .../<run>/checkpoints/policy_x.safetensors -> that run's final success
        src = Path(str(init)).parent.parent
        s = _final_success_of_run(src) if src.is_dir() else None
        if s is not None:
            run.start_success, run.start_source = s, str(src)
    return run


_SEED_SUFFIX = re.compile(r"(^|,)s\d+$")
"""The seed part of an rlft sweep run name ('algo_cfg.beta=3,s1' -> grid point 'algo_cfg.beta=3')."""


def _sub_runs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and (d / "metrics.jsonl").is_file())


def is_pipeline_dir(p: Path) -> bool:
    return (p / "pipeline.yaml").is_file() or (p / "pipeline_summary.json").is_file()


def expand_runs(paths: list[str | Path]) -> list[RunData]:
    """Load each path; a pipeline directory becomes its stages, in pipeline order."""
    if not paths:
        raise ReportError("no run directory given")
    runs: list[RunData] = []
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise ReportError(f"{p}: no such run directory")
        if p.is_dir() and is_pipeline_dir(p) and not (p / "metrics.jsonl").exists():
            spec = _read_yaml(p / "pipeline.yaml")
            names = [s.get("name") for s in spec.get("stages", []) if isinstance(s, dict) and s.get("name")]
            if not names:  # fall back to the summary's rows, then to sub-directories holding metrics
                summ = _read_json(p / "pipeline_summary.json") or {}
                names = [r["stage"] for r in summ.get("stages", []) if (p / str(r.get("stage"))).is_dir()]
            stages = [n for n in names if (p / n / "metrics.jsonl").is_file()]
            if not stages:
                raise ReportError(f"{p}: pipeline directory without any finished stage (no <stage>/metrics.jsonl)")
            handoff = str(spec.get("handoff", "final"))
            prev: RunData | None = None
            for st in stages:
                run = load_run(p / st, name=f"{p.name}/{st}", group=st, pipeline=p.name)
                if prev is not None:  # a stage starts from the previous stage's final (or best) policy
                    ev = prev.final_eval()
                    best = (prev.summary or {}).get("best_success_once")
                    start = best if handoff == "best" and best is not None else ev.get("eval/success_once")
                    if start is not None:
                        run.start_success, run.start_source = float(start), f"stage {prev.group}"
                runs.append(run)
                prev = run
        elif p.is_dir() and not (p / "metrics.jsonl").exists() and _sub_runs(p):
            subs = _sub_runs(p)  # a directory of run directories, e.g. an rlft sweep: <sweep>/<point>,s<seed>
            points = [_SEED_SUFFIX.sub("", d.name) or d.name for d in subs]
            by_point = len(set(points)) < len(points)  # several seeds per grid point: overlay and average those
            for d, pt in zip(subs, points):
                runs.append(load_run(d, name=f"{p.name}/{d.name}", group=f"{p.name}/{pt}" if by_point else p.name))
        else:
            runs.append(load_run(p))
    names = [r.name for r in runs]
    for i, r in enumerate(runs):  # disambiguate equal display names (e.g. two 'runs/x' from different parents)
        if names.count(r.name) > 1:
            r.name = f"{r.name}#{i}"
    return runs


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
