"""``rlft sweep``: one ``rlft train`` config run over a grid of overrides x seeds, then one results table.

A sweep YAML names a base training config, the grid and the seeds::

    base: offline_sac.yaml                       # an ordinary rlft train YAML (relative to this file)
    grid:                                        # dotted field -> values; the cartesian product is run
      algo_cfg.actor_loss_type: [sac, td3bc, awr, iql]
      algo_cfg.policy.kind: [gaussian, flow]
    seeds: [0, 1, 2]
    overrides: {steps: 20000}                    # nested fields applied to every run
    collect: {mode: demos, num_episodes: 30}     # the dataset, collected once (or give `dataset:`)

Each run is an ordinary training run in ``<out_dir>/<name>/<run name>`` (its resolved YAML is kept next to it in
``configs/``), executed as a separate ``rlft train`` process, ``parallel`` at a time. A run whose ``summary.json``
exists is skipped, so an interrupted sweep resumes where it stopped. The results (success_once, success_at_end,
best success_once, wall time, updates/s per run, and mean over seeds per grid point) go to ``results.md`` /
``results.json``; ``rlft report <sweep dir>/<run> ...`` overlays the runs' curves.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from rich.markup import escape
from rich.table import Table

from rlft.collect import CollectConfig
from rlft.config import from_dict, read_yaml, save_yaml
from rlft.errors import ConfigError, TrainingError
from rlft.train.config import train_config_from_dict
from rlft.utils import atomic_write_text, make_console

console = make_console()


@dataclasses.dataclass
class SweepConfig:
    """A grid of ``rlft train`` runs over one base config."""

    base: str
    """The base ``rlft train`` YAML (a relative path is resolved against the sweep YAML's folder); grid ``base``
    values are resolved against this file's folder."""
    grid: dict = dataclasses.field(default_factory=dict)
    """Dotted field name -> list of values, e.g. ``{algo_cfg.beta: [1, 3]}``; every combination is run. The key
    ``base`` varies the base config itself (a list of train YAMLs, e.g. one per algorithm)."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    """Seeds (``run.seed``); every grid point runs once per seed."""
    overrides: dict = dataclasses.field(default_factory=dict)
    """Nested fields merged into the base config of every run, e.g. ``{steps: 20000, eval: {every: 5000}}``."""
    base_overrides: dict = dataclasses.field(default_factory=dict)
    """Per base config (a grid ``base`` value, e.g. ``offline_cql.yaml``): nested fields merged after ``overrides``
    into that config only, e.g. ``{offline_qc.yaml: {algo_cfg: {num_samples: 8}}}``."""
    dataset: Optional[str] = None
    """Dataset file for every run; when unset the sweep collects one (``collect`` + ``also_collect``) first."""
    collect: Optional[CollectConfig] = None
    """Expert-data collection used when ``dataset`` is unset (env id from the base config, seed 0)."""
    also_collect: list[CollectConfig] = dataclasses.field(default_factory=list)
    """More collections appended to the same dataset (e.g. play data next to task demos)."""
    parallel: int = 1
    """Runs executed at the same time (separate processes, one torch thread each)."""
    out_dir: str = "runs"
    """Parent folder of the sweep directory."""
    name: Optional[str] = None
    """Sweep directory name (default: sweep-<base config name>-<timestamp>)."""

    def __post_init__(self) -> None:
        from rlft.config import check_dir_name

        check_dir_name(self.name, "name")
        if not isinstance(self.grid, dict) or any(not isinstance(v, list) or not v for v in self.grid.values()):
            raise ConfigError("grid: must map dotted field names to non-empty lists of values")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        unknown = set(self.base_overrides) - set(self.grid.get("base", []))
        if unknown:
            raise ConfigError(f"base_overrides: {sorted(unknown)} are not among the grid's base configs")
        if self.parallel < 1:
            raise ConfigError(f"parallel must be >= 1, got {self.parallel}")


def load_sweep_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    cfg = from_dict(SweepConfig, read_yaml(path), str(path))
    base = Path(cfg.base)
    if not base.is_absolute() and not base.exists():
        cfg.base = str(path.parent / base)
    return cfg


def set_dotted(d: dict, dotted: str, value: Any) -> dict:
    """Return a copy of the nested dict ``d`` with ``a.b.c`` set to ``value`` (intermediate dicts created)."""
    out = copy.deepcopy(d)
    node = out
    *parents, leaf = dotted.split(".")
    for k in parents:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[leaf] = value
    return out


def _resolve(path: str, next_to: str) -> str:
    """A grid ``base`` value: as given if it exists, else relative to the folder of the sweep's ``base``."""
    p = Path(path)
    return str(p if p.is_absolute() or p.exists() else Path(next_to).parent / p)


def run_name(point: dict[str, Any], seed: int) -> str:
    """``actor_loss_type=sac,kind=flow,s0``: the last component of each dotted name (a grid ``base`` by its file
    stem), then the seed."""
    parts = [f"{k.split('.')[-1]}={Path(str(v)).stem if k == 'base' else v}" for k, v in point.items()]
    return ",".join(parts + [f"s{seed}"]).replace("/", "_").replace(" ", "")


def expand(cfg: SweepConfig) -> list[tuple[str, dict[str, Any], int, dict]]:
    """Every run as ``(name, grid point, seed, resolved train-config dict)``; each dict is validated up front."""
    from rlft.train.pipeline import _deep_merge

    keys = list(cfg.grid)
    runs = []
    for values in itertools.product(*(cfg.grid[k] for k in keys)):
        point = dict(zip(keys, values))
        base_path = _resolve(point["base"], cfg.base) if "base" in point else cfg.base
        base = _deep_merge(read_yaml(base_path), cfg.overrides)
        base = _deep_merge(base, cfg.base_overrides.get(point.get("base"), {}))
        for seed in cfg.seeds:
            d = base
            for k, v in point.items():
                if k != "base":
                    d = set_dotted(d, k, v)
            d = set_dotted(d, "run.seed", seed)
            name = run_name(point, seed)
            train_config_from_dict(d, f"{base_path} with {name}")  # a typo in the grid fails before any run
            runs.append((name, point, seed, d))
    return runs


def collect_env_id(cfg: SweepConfig, runs) -> str | None:
    """The env a sweep collects its dataset on: the one its runs resolve to (base config + overrides + grid)."""
    env_ids = {d.get("env", {}).get("env_id") for *_, d in runs} - {None}
    if len(env_ids) > 1:
        raise ConfigError(
            f"collect: the runs use several envs ({', '.join(sorted(env_ids))}); one collected dataset "
            f"cannot serve them all -- give `dataset:` or sweep one env at a time"
        )
    return next(iter(env_ids), None) or (cfg.collect.env_id if cfg.collect else None)


def _summarise(sweep_dir: Path, runs) -> dict:
    rows = []
    for name, point, seed, _ in runs:
        run_dir = sweep_dir / name
        s = json.loads((run_dir / "summary.json").read_text())
        ups = [json.loads(line).get("time/updates_per_s") for line in (run_dir / "metrics.jsonl").open()]
        ups = [u for u in ups if u is not None]
        ev = s["final"] or {}  # None when the runs were not evaluated (eval.num_episodes 0)
        rows.append(
            {
                "run": name,
                "point": point,
                "seed": seed,
                "success_once": ev.get("eval/success_once", math.nan),
                "success_at_end": ev.get("eval/success_at_end", math.nan),
                "best_success_once": s["best_success_once"],
                "wall_s": s["wall_s"],
                "updates_per_s": statistics.median(ups) if ups else None,
            }
        )
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps(r["point"]), []).append(r)
    means = [
        {
            "point": json.loads(k),
            "seeds": [r["seed"] for r in g],
            **{
                m: statistics.mean(r[m] for r in g)
                for m in ("success_once", "success_at_end", "best_success_once", "wall_s")
            },
        }
        for k, g in groups.items()
    ]
    return {"sweep_dir": str(sweep_dir), "runs": rows, "means": means}


def results_markdown(res: dict) -> str:
    keys = list(res["means"][0]["point"]) if res["means"] else []
    head = " | ".join(keys)
    lines = [
        f"# rlft sweep: {res['sweep_dir']}",
        "",
        "Mean over seeds:",
        "",
        f"| {head} | seeds | success_once | success_at_end | best success_once | wall (s) |",
        "|" + "---|" * (len(keys) + 5),
    ]
    for m in res["means"]:
        vals = " | ".join(str(m["point"][k]) for k in keys)
        lines.append(
            f"| {vals} | {len(m['seeds'])} | {m['success_once']:.2f} | {m['success_at_end']:.2f} | "
            f"{m['best_success_once']:.2f} | {m['wall_s']:.0f} |"
        )
    lines += [
        "",
        "Per run:",
        "",
        "| run | success_once | success_at_end | wall (s) | updates/s |",
        "|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        ups = f"{r['updates_per_s']:.0f}" if r["updates_per_s"] else ""
        lines.append(
            f"| {r['run']} | {r['success_once']:.2f} | {r['success_at_end']:.2f} | {r['wall_s']:.0f} | {ups} |"
        )
    return "\n".join(lines) + "\n"


def run_sweep(cfg: SweepConfig, sweep_yaml: str | None = None) -> dict:
    from rlft.train.pipeline import collect_dataset

    runs = expand(cfg)
    name = cfg.name or f"sweep-{Path(cfg.base).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = Path(cfg.out_dir) / name
    (sweep_dir / "configs").mkdir(parents=True, exist_ok=True)
    (sweep_dir / "logs").mkdir(exist_ok=True)
    save_yaml(cfg, sweep_dir / "sweep.yaml")
    dataset = cfg.dataset
    if dataset is None:
        if cfg.collect is None:
            raise ConfigError("dataset: give a dataset file or a `collect:` section")
        existing = [sweep_dir / "data" / n for n in ("dataset.h5", "source0-" + cfg.collect.mode + ".h5")]
        done = next((p for p in existing if p.is_file() and (not cfg.also_collect or p.name == "dataset.h5")), None)
        if done is not None:
            dataset = str(done)
        else:
            dataset, _ = collect_dataset(
                [cfg.collect, *cfg.also_collect], collect_env_id(cfg, runs), 0, sweep_dir / "data"
            )
    todo = []
    for rname, _point, _seed, d in runs:
        d = copy.deepcopy(d)
        d["dataset"] = d.get("dataset") or dataset
        d.setdefault("run", {}).update({"out_dir": str(sweep_dir), "name": rname, "threads": 1})
        cpath = sweep_dir / "configs" / f"{rname}.yaml"
        save_yaml(train_config_from_dict(d, str(cpath)), cpath)
        if (sweep_dir / rname / "summary.json").is_file():
            console.print(f"[dim]{escape(rname)}: done already, skipped[/dim]")
        else:
            todo.append((rname, cpath))
    console.print(f"sweep {escape(str(sweep_dir))}: {len(runs)} runs, {len(todo)} to do, {cfg.parallel} at a time")
    _execute(todo, sweep_dir, cfg.parallel)
    res = _summarise(sweep_dir, runs)
    atomic_write_text(sweep_dir / "results.json", json.dumps(res, indent=2))
    atomic_write_text(sweep_dir / "results.md", results_markdown(res))
    print_results(res)
    return res


def _execute(todo: list[tuple[str, Path]], sweep_dir: Path, parallel: int) -> None:
    """Run ``rlft train --config <cpath>`` for each entry, ``parallel`` processes at a time; fail on the first error."""
    pending = list(todo)
    active: list[tuple[str, subprocess.Popen, Any]] = []
    failed: list[str] = []
    while pending or active:
        while pending and len(active) < parallel and not failed:
            rname, cpath = pending.pop(0)
            log = (sweep_dir / "logs" / f"{rname}.log").open("w")
            cmd = [sys.executable, "-m", "rlft.cli", "train", "--config", str(cpath)]
            active.append((rname, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
            console.print(f"started {escape(rname)}")
        time.sleep(0.5)
        for item in list(active):
            rname, proc, log = item
            if proc.poll() is None:
                continue
            log.close()
            active.remove(item)
            if proc.returncode != 0:
                failed.append(rname)
                console.print(
                    f"[red]{escape(rname)} failed (exit {proc.returncode}); see "
                    f"{escape(str(sweep_dir))}/logs/{escape(rname)}.log[/red]"
                )
            else:
                console.print(f"finished {escape(rname)}")
        if failed and not active:
            raise TrainingError(f"sweep runs failed: {failed}; their logs are in {sweep_dir / 'logs'}")


def print_results(res: dict) -> None:
    keys = list(res["means"][0]["point"]) if res["means"] else []
    t = Table(title=f"rlft sweep - mean over seeds ({res['sweep_dir']})")
    for c in [*keys, "seeds", "success_once", "success_at_end", "wall (s)"]:
        t.add_column(c)
    for m in res["means"]:
        t.add_row(
            *(escape(str(m["point"][k])) for k in keys),
            str(len(m["seeds"])),
            f"{m['success_once']:.2f}",
            f"{m['success_at_end']:.2f}",
            f"{m['wall_s']:.0f}",
        )
    console.print(t)
