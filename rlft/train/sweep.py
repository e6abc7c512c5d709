"""``rlft sweep``: one ``rlft train`` (or ``rlft pipeline``) config over a grid (or a sampled search) of overrides x
seeds, run as Ray Tune trials (rlft.train.trials), then one results table.

A sweep YAML names a base training config, the grid and the seeds::

    base: offline_sac.yaml                       # an ordinary rlft train YAML (relative to this file)
    grid:                                        # dotted field -> values; the cartesian product is run
      algo_cfg.actor_loss_type: [sac, td3bc, awr, iql]
      algo_cfg.policy.kind: [gaussian, flow]
    seeds: [0, 1, 2]
    overrides: {steps: 20000}                    # nested fields applied to every run
    collect: {mode: demos, num_episodes: 30}     # the dataset, collected once (or give `dataset:`)
    ray: {cpus_per_trial: 1}                     # where trials run (--address HOST:PORT joins a cluster)

The base may also be an ``rlft pipeline`` YAML: each run is then one whole pipeline (its data, stages and deploy
gate), grid fields reach into its stages by index (``stages.1.overrides.algo_cfg.beta``), and the table shows each
run's deployed policy. Each run is an ordinary training (or pipeline) run in ``<out_dir>/<name>/<run name>`` (its
resolved YAML in ``configs/``, where it ran in ``trial.json``). ``search: random`` / ``optuna`` draw
``num_samples`` points instead (a grid entry may then be a range ``{low, high, log}``); ``asha: true`` stops weak
trials early on their periodic evaluations. Calling the same command again resumes an interrupted sweep through
Tune's restore without re-running finished runs. The results
(per run: status, success_once, success_at_end, wall time, updates/s, attempts; per point: the mean over seeds with a
95 % interval) go to ``results.md`` / ``results.json``; ``rlft report <sweep dir>/<run> ...`` overlays the runs'
curves.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any, Literal, Optional

import tyro
from rich.markup import escape
from rich.table import Table

from rlft.collect import CollectConfig
from rlft.config import from_dict, read_yaml, save_yaml
from rlft.errors import ConfigError, TrainingError
from rlft.train.config import train_config_from_dict
from rlft.train.gate import mean_interval
from rlft.train.trials import (
    RayOptions,
    error_line,
    in_driver_folder,
    output_to,
    record_attempt,
    report,
    run_trials,
    same_experiment,
    set_aside,
    trial_threads,
)
from rlft.utils import atomic_write_text, make_console

console = make_console()


@dataclasses.dataclass
class SweepConfig:
    """``rlft train`` runs over one base config: a grid (or a sampled search) of overrides x seeds, as Ray Tune
    trials."""

    base: str
    """The base ``rlft train`` YAML, or an ``rlft pipeline`` YAML (then each run is one whole pipeline, and the
    table shows its deployed policy). A relative path is resolved against the sweep YAML's folder; grid ``base``
    values are resolved against this file's folder."""
    grid: dict = dataclasses.field(default_factory=dict)
    """Dotted field name -> values, e.g. ``{algo_cfg.beta: [1, 3]}``. ``search: grid`` runs every combination; the
    sampled searches draw from the lists, or from a range given as ``{low: 0.1, high: 10, log: true}``. The key
    ``base`` varies the base config itself (a list of train YAMLs, e.g. one per algorithm)."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    """Seeds (``run.seed``); every grid point (or sampled point) runs once per seed."""
    search: Literal["grid", "random", "optuna"] = "grid"
    """How points are chosen: every combination of ``grid``; ``random`` draws ``num_samples`` points (Tune's random
    search); ``optuna`` lets Optuna's TPE sampler propose ``num_samples`` points from the finished trials'
    ``eval/success_once`` (one seed; ``pip install optuna``)."""
    num_samples: int = 8
    """Points drawn by the random and Optuna searches (unused by ``grid``)."""
    asha: bool = False
    """Stop unpromising trials early with ASHA (Li et al. 2020) on their periodic ``eval/success_once`` (needs
    ``eval.every`` > 0 in the runs); a stopped run keeps its directory and is marked in the results."""
    asha_grace_steps: int = 0
    """ASHA: steps every trial runs before it can be stopped (0: the runs' ``eval.every``)."""
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
    ray: tyro.conf.OmitArgPrefixes[RayOptions] = dataclasses.field(default_factory=RayOptions)
    """Where the trials run and with what (``--address``, ``--cpus-per-trial``, ``--gpus-per-trial``,
    ``--max-concurrent``, ``--max-failures`` on the command line; ``ray:`` in YAML)."""
    out_dir: str = "runs"
    """Parent folder of the sweep directory."""
    name: Optional[str] = None
    """Sweep directory name (default: sweep-<base config name>-<timestamp>)."""

    def __post_init__(self) -> None:
        from rlft.config import check_choices, check_dir_name

        check_dir_name(self.name, "name")
        check_choices(self, "sweep")
        if not isinstance(self.grid, dict) or any(not _is_values(v, self.search) for v in self.grid.values()):
            raise ConfigError(
                "grid: must map dotted field names to non-empty lists of values"
                + ("" if self.search == "grid" else " or to ranges {low: .., high: .., log: false}")
            )
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if self.search == "optuna" and len(self.seeds) != 1:
            raise ConfigError(
                f"seeds: the Optuna search ranks each point by one run; give one seed (got {self.seeds}), then run "
                "the best points over seeds with search: grid"
            )
        unknown = set(self.base_overrides) - set(self.grid.get("base", []))
        if unknown:
            raise ConfigError(f"base_overrides: {sorted(unknown)} are not among the grid's base configs")
        if self.num_samples < 1 or self.asha_grace_steps < 0:
            raise ConfigError(
                f"num_samples must be >= 1 and asha_grace_steps >= 0 ({self.num_samples}, {self.asha_grace_steps})"
            )


def _is_values(v: Any, search: str) -> bool:
    """A grid entry: a non-empty list, or (sampled searches) a numeric range ``{low, high[, log]}``."""
    if isinstance(v, list):
        return bool(v)
    return (
        search != "grid"
        and isinstance(v, dict)
        and set(v) - {"log"} == {"low", "high"}
        and all(isinstance(v[k], (int, float)) for k in ("low", "high"))
        and v["low"] < v["high"]
    )


def load_sweep_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    cfg = from_dict(SweepConfig, read_yaml(path), str(path))
    base = Path(cfg.base)
    if not base.is_absolute() and not base.exists():
        cfg.base = str(path.parent / base)
    return cfg


def set_dotted(d: dict, dotted: str, value: Any) -> dict:
    """Return a copy of the nested dict ``d`` with ``a.b.c`` set to ``value`` (intermediate dicts created); a
    numeric component indexes a list, e.g. ``stages.2.overrides.steps``."""
    out = copy.deepcopy(d)
    node: Any = out
    *parents, leaf = dotted.split(".")
    for k in parents:
        if isinstance(node, list):
            node = node[_index(node, k, dotted)]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"grid: {dotted}: '{k}' indexes a value, not a mapping")
            continue
        if not isinstance(node.get(k), (dict, list)):
            node[k] = {}
        node = node[k]
    if isinstance(node, list):
        node[_index(node, leaf, dotted)] = value
    else:
        node[leaf] = value
    return out


def _index(node: list, k: str, dotted: str) -> int:
    if not k.isdigit() or int(k) >= len(node):
        raise ConfigError(f"grid: {dotted}: '{k}' is not an index of a list of {len(node)}")
    return int(k)


def is_pipeline(d: dict) -> bool:
    """Whether a base config is an ``rlft pipeline`` YAML (it has ``stages``) rather than an ``rlft train`` one."""
    return "stages" in d


def _resolve(path: str, next_to: str) -> str:
    """A grid ``base`` value: as given if it exists, else relative to the folder of the sweep's ``base``."""
    p = Path(path)
    return str(p if p.is_absolute() or p.exists() else Path(next_to).parent / p)


def run_name(point: dict[str, Any], seed: int) -> str:
    """``actor_loss_type=sac,kind=flow,s0``: the last component of each dotted name (a grid ``base`` by its file
    stem), then the seed."""
    parts = [f"{k.split('.')[-1]}={Path(str(v)).stem if k == 'base' else v}" for k, v in point.items()]
    return ",".join(parts + [f"s{seed}"]).replace("/", "_").replace(" ", "")


def trial_name(cfg: SweepConfig, point: dict[str, Any], seed: int, trial_id: str | None) -> str:
    """A trial's run name: ``run_name`` for a grid; a sampled search can propose one point twice, so its names
    also carry Tune's trial id (and sampled floats are shortened to 4 significant digits)."""
    if cfg.search == "grid":
        return run_name(point, seed)
    short = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in point.items()}
    return f"{run_name(short, seed)},{trial_id}"


def resolve_run(cfg: SweepConfig, point: dict[str, Any], seed: int) -> tuple[str, dict]:
    """One run of the sweep: its name and its resolved ``rlft train`` (or ``rlft pipeline``) dict -- base config +
    ``overrides`` + ``base_overrides`` + the point's fields + the seed -- validated (a typo in the grid fails here)."""
    from rlft.train.pipeline import _deep_merge

    base_path = _resolve(point["base"], cfg.base) if "base" in point else cfg.base
    d = _deep_merge(read_yaml(base_path), cfg.overrides)
    d = _deep_merge(d, cfg.base_overrides.get(point.get("base"), {}))
    for k, v in point.items():
        if k != "base":
            d = set_dotted(d, k, v)
    name = run_name(point, seed)
    if is_pipeline(d):
        return name, _pipeline_dict(d, base_path, seed, f"{base_path} with {name}")
    d = set_dotted(d, "run.seed", seed)
    train_config_from_dict(d, f"{base_path} with {name}")
    return name, d


def _pipeline_dict(d: dict, base_path: str, seed: int, where: str) -> dict:
    """A pipeline run's dict: the seed set, stage YAML paths made absolute (against the pipeline YAML's folder) and
    every stage parsed."""
    from rlft.config import from_dict
    from rlft.train.pipeline import PipelineConfig, _parse_stages

    d = {**d, "seed": seed, "seeds": []}
    if not isinstance(d.get("stages"), list):
        raise ConfigError(f"{where}: stages must be a list")
    d["stages"] = [
        {**st, "config": str(Path(_resolve(st["config"], base_path)).resolve())}
        if isinstance(st, dict) and "config" in st
        else st
        for st in d["stages"]
    ]
    _parse_stages(from_dict(PipelineConfig, d, where))
    return d


def expand(cfg: SweepConfig) -> list[tuple[str, dict[str, Any], int, dict]]:
    """The runs to validate before any starts, as ``(name, point, seed, resolved train dict)``: every run of a grid
    search; for a sampled search, each value (or range end) of each field on the first value of the others."""
    keys = list(cfg.grid)
    if cfg.search == "grid":
        points = [dict(zip(keys, vs)) for vs in itertools.product(*(cfg.grid[k] for k in keys))]
    else:
        ends = {k: v if isinstance(v, list) else [v["low"], v["high"]] for k, v in cfg.grid.items()}
        first = {k: v[0] for k, v in ends.items()}
        points = [first] + [{**first, k: v} for k in keys for v in ends[k][1:]]
    return [(name, p, seed, d) for p in points for seed in cfg.seeds for name, d in [resolve_run(cfg, p, seed)]]


def collect_env_id(cfg: SweepConfig, runs) -> str | None:
    """The env a sweep collects its dataset on: the one its runs resolve to (base config + overrides + grid)."""
    env_ids = {d.get("env", {}).get("env_id") for *_, d in runs} - {None}
    if len(env_ids) > 1:
        raise ConfigError(
            f"collect: the runs use several envs ({', '.join(sorted(env_ids))}); one collected dataset "
            f"cannot serve them all -- give `dataset:` or sweep one env at a time"
        )
    return next(iter(env_ids), None) or (cfg.collect.env_id if cfg.collect else None)


@dataclasses.dataclass
class SweepJob:
    """What every trial of one sweep shares (sent to the Ray workers)."""

    cfg: SweepConfig
    sweep_dir: Path
    dataset: str
    cwd: str = dataclasses.field(default_factory=os.getcwd)
    """The folder the command was started from (the trials run there)."""


def train_trial(params: dict, job: SweepJob) -> None:
    """One Tune trial: the ``rlft train`` run of ``params`` (``point``, ``seed``) in ``<sweep dir>/<run name>``,
    reporting each periodic evaluation to Tune (for ASHA) and the run's final results. A run finished by an earlier
    call is not run again; a retry resumes from the run's checkpoint, or starts clean with the failed attempt's
    directory set aside."""
    from ray import tune

    from rlft.train.runner import Trainer

    in_driver_folder(job.cwd)
    _, d = resolve_run(job.cfg, params["point"], params["seed"])
    name = trial_name(job.cfg, params["point"], params["seed"], tune.get_context().get_trial_id())
    if is_pipeline(d):
        return pipeline_trial(d, name, job)
    run_dir = job.sweep_dir / name
    where = record_attempt(run_dir)
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    else:
        d = copy.deepcopy(d)
        d["dataset"] = d.get("dataset") or job.dataset
        d.setdefault("run", {}).update(
            {
                "out_dir": str(job.sweep_dir),
                "name": name,
                "threads": trial_threads(job.cfg.ray),
                "wandb_group": d.get("run", {}).get("wandb_group") or job.sweep_dir.name,
            }
        )
        if (run_dir / "checkpoints" / "state.pt").is_file():
            d["run"]["resume"] = True
        elif (run_dir / "metrics.jsonl").exists():
            set_aside(run_dir)
        tcfg = train_config_from_dict(d, name)
        save_yaml(tcfg, job.sweep_dir / "configs" / f"{name}.yaml")
        with output_to(run_dir / "trial.log"):
            trainer = Trainer(tcfg, run_dir, quiet=True)
            trainer.log_hooks.append(_report_eval)
            summary = trainer.run()
    final = summary["final"] or {}
    report(
        {
            "step": summary["steps"],
            "success_once": final.get("eval/success_once", math.nan),
            "done": True,
            "node_id": where["node_id"],
        }
    )


def pipeline_trial(d: dict, name: str, job: SweepJob) -> None:
    """One Tune trial of a pipeline sweep: the ``rlft pipeline`` run of ``d`` in ``<sweep dir>/<run name>``
    (rlft.train.multiseed.pipeline_in_trial), reporting its deployed policy's success."""
    from rlft.config import from_dict
    from rlft.train.multiseed import deployed_row, pipeline_in_trial
    from rlft.train.pipeline import PipelineConfig

    d = {**d, "out_dir": str(job.sweep_dir), "name": name, "dataset": d.get("dataset") or job.dataset or None}
    d["wandb_group"] = d.get("wandb_group") or job.sweep_dir.name  # W&B: one group per sweep
    pcfg = from_dict(PipelineConfig, d, name)
    save_yaml(pcfg, job.sweep_dir / "configs" / f"{name}.yaml")
    result = pipeline_in_trial(pcfg, job.cfg.ray)
    report({"success_once": deployed_row(result).get("success_once", math.nan), "done": True})


def _report_eval(step: int, metrics: dict) -> None:
    """Log hook of a trial: each evaluation goes to Tune (the metric ASHA and Optuna read)."""
    if "eval/success_once" in metrics:
        report({"step": step, "success_once": float(metrics["eval/success_once"]), "done": False})


def search_space(cfg: SweepConfig, runs) -> tuple[dict, dict]:
    """Tune's ``param_space`` and extra ``TuneConfig`` fields for the sweep's search (and ASHA)."""
    from ray import tune

    if cfg.search == "grid":
        points = list({json.dumps(p, sort_keys=True): p for _, p, _, _ in runs}.values())
        space = {"point": tune.grid_search(points), "seed": tune.grid_search(cfg.seeds)}
        extra: dict = {}
    else:
        point = {k: tune.choice(v) if isinstance(v, list) else _range(v) for k, v in cfg.grid.items()}
        space = {"point": point, "seed": tune.grid_search(cfg.seeds) if cfg.search == "random" else cfg.seeds[0]}
        extra = {"num_samples": cfg.num_samples}
        if cfg.search == "optuna":
            extra["search_alg"] = _optuna()
        else:  # one random point runs on every seed (not a new point per seed)
            from ray.tune.search.basic_variant import BasicVariantGenerator

            extra["search_alg"] = BasicVariantGenerator(constant_grid_search=True)
    if cfg.asha:
        extra["scheduler"] = _asha(cfg, runs)
    if cfg.search == "optuna" or cfg.asha:
        extra.update(metric="success_once", mode="max")
    return space, extra


def _range(v: dict):
    from ray import tune

    return (tune.loguniform if v.get("log") else tune.uniform)(v["low"], v["high"])


def _optuna():
    try:
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch()
    except ImportError as e:
        raise ConfigError("search: optuna needs the optuna package: pip install optuna") from e


def _asha(cfg: SweepConfig, runs):
    from ray.tune.schedulers import ASHAScheduler

    if any(is_pipeline(d) for *_, d in runs):
        raise ConfigError("asha: a pipeline trial reports once, at its end; early stopping needs `rlft train` bases")
    steps = max(d.get("steps", 0) or 0 for *_, d in runs) or None
    every = min(d.get("eval", {}).get("every", 0) or 0 for *_, d in runs)
    if every <= 0:
        raise ConfigError("asha: the runs must evaluate periodically (set eval.every > 0 in overrides)")
    # a trial that reaches its last step finishes (writes its policy and summary) instead of being stopped there
    return ASHAScheduler(
        time_attr="step", max_t=(steps or 10**9) + 1, grace_period=cfg.asha_grace_steps or every, stop_last_trials=False
    )


def _trial_id(result) -> str | None:
    """Tune's id of a result's trial: from its reported metrics, else from its trial directory's name."""
    if (result.metrics or {}).get("trial_id"):
        return result.metrics["trial_id"]
    m = re.search(r"_([0-9a-f]{5}_\d{5})(_|$)", Path(str(result.path)).name) if result.path else None
    return m.group(1) if m else None


def _row(cfg: SweepConfig, sweep_dir: Path, result) -> dict:
    """One results row from a Tune result and the run's directory (summary, metrics, trial.json)."""
    point, seed = result.config["point"], result.config["seed"]
    name = trial_name(cfg, point, seed, _trial_id(result))
    run_dir = sweep_dir / name
    trial = json.loads((run_dir / "trial.json").read_text()) if (run_dir / "trial.json").is_file() else {}
    attempts = trial.get("attempts", [])
    row = {
        "run": name,
        "point": point,
        "seed": seed,
        "attempts": len(attempts),
        "node_id": attempts[-1]["node_id"] if attempts else None,
    }
    if result.error is not None:
        return {**row, "status": "failed", "error": error_line(result.error)}
    if (run_dir / "pipeline_summary.json").is_file():
        return {**row, **_pipeline_row(json.loads((run_dir / "pipeline_summary.json").read_text()))}
    if not (run_dir / "summary.json").is_file():
        # ASHA stopped it, or the sweep was interrupted (calling it again resumes it)
        return {**row, "status": "stopped", "success_once": (result.metrics or {}).get("success_once")}
    s = json.loads((run_dir / "summary.json").read_text())
    ups = [json.loads(line).get("time/updates_per_s") for line in (run_dir / "metrics.jsonl").open()]
    ups = [u for u in ups if u is not None]
    ev = s["final"] or {}  # None when the runs were not evaluated (eval.num_episodes 0)
    return {
        **row,
        "status": "done",
        "success_once": ev.get("eval/success_once", math.nan),
        "success_at_end": ev.get("eval/success_at_end", math.nan),
        "best_success_once": s["best_success_once"],
        "wall_s": s["wall_s"],
        "updates_per_s": statistics.median(ups) if ups else None,
    }


def _pipeline_row(result: dict) -> dict:
    """A finished pipeline's results row: its deployed policy's success (and which stage it came from)."""
    from rlft.train.multiseed import deployed_row

    dep = deployed_row(result)
    evaluated = [r["success_once"] for r in result["stages"] if r.get("episodes")]
    return {
        "status": "done",
        "success_once": dep.get("success_once", math.nan),
        "success_at_end": dep.get("success_at_end", math.nan),
        "best_success_once": max(evaluated, default=math.nan),
        "wall_s": result["wall_s"],
        "updates_per_s": None,
        "deployed": dep.get("stage"),
    }


def summarise(cfg: SweepConfig, sweep_dir: Path, results) -> dict:
    """Per-run rows (every trial, failed and stopped ones included) and, per point, the mean over its finished
    seeds with a 95 % Student-t interval."""
    rows = sorted((_row(cfg, sweep_dir, r) for r in results), key=lambda r: r["run"])
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "done":
            groups.setdefault(json.dumps(r["point"], sort_keys=True), []).append(r)
    means = []
    for k, g in groups.items():
        m = {"point": json.loads(k), "seeds": sorted(r["seed"] for r in g)}
        for f in ("success_once", "success_at_end", "best_success_once", "wall_s"):
            m[f] = statistics.mean(r[f] for r in g)
        ci = mean_interval([r["success_once"] for r in g], (0.0, 1.0))
        m["success_once_interval"] = list(ci[1:]) if ci else None
        means.append(m)
    return {"sweep_dir": str(sweep_dir), "runs": rows, "means": means}


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _ci(m: dict) -> str:
    ci = m.get("success_once_interval")
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def results_markdown(res: dict) -> str:
    keys = list(res["means"][0]["point"]) if res["means"] else []
    lines = [
        f"# rlft sweep: {res['sweep_dir']}",
        "",
        "Mean over seeds (95 % Student-t interval over seeds):",
        "",
        f"| {' | '.join(keys)} | seeds | success_once | 95% interval | success_at_end | best success_once | wall (s) |",
        "|" + "---|" * (len(keys) + 6),
    ]
    for m in res["means"]:
        lines.append(
            f"| {' | '.join(str(m['point'][k]) for k in keys)} | {len(m['seeds'])} | {m['success_once']:.2f} | "
            f"{_ci(m)} | {m['success_at_end']:.2f} | {m['best_success_once']:.2f} | {m['wall_s']:.0f} |"
        )
    lines += [
        "",
        "Per run:",
        "",
        "| run | status | success_once | success_at_end | wall (s) | updates/s | attempts |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        status = r["status"] if r["status"] != "failed" else f"failed: {r['error']}"
        lines.append(
            f"| {r['run']} | {status} | {_fmt(r.get('success_once'))} | {_fmt(r.get('success_at_end'))} | "
            f"{_fmt(r.get('wall_s'), '.0f')} | {_fmt(r.get('updates_per_s'), '.0f')} | {r['attempts']} |"
        )
    return "\n".join(lines) + "\n"


def sweep_dataset(cfg: SweepConfig, sweep_dir: Path, runs) -> str:
    """The dataset every run trains on: ``cfg.dataset``, or one collected into ``<sweep dir>/data`` (once: a
    resumed sweep reuses it)."""
    from rlft.train.pipeline import collect_dataset

    if cfg.dataset is not None:
        return cfg.dataset
    if all(is_pipeline(d) for *_, d in runs) and cfg.collect is None:
        return ""  # each pipeline collects its own data (its ``collect:`` section)
    if cfg.collect is None:
        raise ConfigError("dataset: give a dataset file or a `collect:` section")
    existing = [sweep_dir / "data" / n for n in ("dataset.h5", "source0-" + cfg.collect.mode + ".h5")]
    done = next((p for p in existing if p.is_file() and (not cfg.also_collect or p.name == "dataset.h5")), None)
    if done is not None:
        return str(done)
    dataset, _ = collect_dataset([cfg.collect, *cfg.also_collect], collect_env_id(cfg, runs), 0, sweep_dir / "data")
    return dataset


def run_sweep(cfg: SweepConfig) -> dict:
    """Validate every run, collect the dataset, run the trials on Ray Tune, then write ``results.json`` /
    ``results.md`` and print the table; a trial that still fails after its retries is reported, then raised."""
    from ray import tune

    runs = expand(cfg)
    name = cfg.name or f"sweep-{Path(cfg.base).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = (Path(cfg.out_dir) / name).resolve()
    (sweep_dir / "configs").mkdir(parents=True, exist_ok=True)
    same_experiment(sweep_dir / "sweep.yaml", cfg)
    dataset = sweep_dataset(cfg, sweep_dir, runs)
    job = SweepJob(cfg, sweep_dir, str(Path(dataset).resolve()) if dataset else "")
    space, extra = search_space(cfg, runs)
    n = len(runs) if cfg.search == "grid" else cfg.num_samples * (len(cfg.seeds) if cfg.search == "random" else 1)
    console.print(f"sweep {escape(str(sweep_dir))}: {n} runs on Ray Tune ({cfg.search} search)")
    results = run_trials(tune.with_parameters(train_trial, job=job), space, sweep_dir, cfg.ray, extra)
    res = summarise(cfg, sweep_dir, results)
    atomic_write_text(sweep_dir / "results.json", json.dumps(res, indent=2))
    atomic_write_text(sweep_dir / "results.md", results_markdown(res))
    print_results(res)
    stopped = [r["run"] for r in res["runs"] if r["status"] == "stopped"]
    if stopped and not cfg.asha:  # only an interruption stops a trial without ASHA
        raise TrainingError(
            f"sweep interrupted: {len(stopped)} run(s) unfinished ({', '.join(stopped)}); run the same command again "
            "to resume"
        )
    failed = [r for r in res["runs"] if r["status"] == "failed"]
    if failed:
        raise TrainingError(
            f"sweep: {len(failed)} run(s) failed after {cfg.ray.max_failures} retries: "
            + "; ".join(f"{r['run']}: {r['error']}" for r in failed)
            + f" (results.md in {sweep_dir})"
        )
    return res


def print_results(res: dict) -> None:
    keys = list(res["means"][0]["point"]) if res["means"] else []
    t = Table(title=f"rlft sweep - mean over seeds ({res['sweep_dir']})")
    for c in [*keys, "seeds", "success_once", "95% interval", "success_at_end", "wall (s)"]:
        t.add_column(c)
    for m in res["means"]:
        t.add_row(
            *(escape(str(m["point"][k])) for k in keys),
            str(len(m["seeds"])),
            f"{m['success_once']:.2f}",
            _ci(m),
            f"{m['success_at_end']:.2f}",
            f"{m['wall_s']:.0f}",
        )
    console.print(t)
    for r in res["runs"]:
        if r["status"] != "done":
            style = "red" if r["status"] == "failed" else "yellow"
            console.print(f"[{style}]{escape(r['run'])}: {escape(r['status'])} {escape(r.get('error', ''))}[/{style}]")
    if any(r["status"] == "stopped" for r in res["runs"]):
        console.print("stopped runs: stopped early by ASHA, or the sweep was interrupted (run it again to resume)")
