"""``rlft pipeline --seeds 0 1 2``: one whole pipeline per seed as Ray Tune trials (rlft.train.trials), then the
per-stage table over seeds.

The pipelines run in ``<out_dir>/<name>/s<seed>``, each exactly as ``rlft pipeline --seed <seed>`` would write it
(its own data, stages, deploy gate and ``results.md``), in parallel as the resources allow (``--cpus-per-trial``;
``--address`` runs them on a Ray cluster). The table over seeds -- per stage the mean success with a 95 % Student-t
interval over seeds and every seed's value, plus each seed's deployed stage -- goes to ``<name>/results.md`` and
``seeds_summary.json``. Calling the same command again resumes: finished pipelines are not run again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from rlft.errors import TrainingError
from rlft.train.gate import mean_interval
from rlft.train.pipeline import PipelineConfig, run_pipeline
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
class SeedsJob:
    """What each seed's trial needs (sent to the Ray workers)."""

    cfg: PipelineConfig
    group_dir: Path
    cwd: str = dataclasses.field(default_factory=os.getcwd)
    """The folder the command was started from (the trials run there)."""


def pipeline_trial(params: dict, job: SeedsJob) -> None:
    """One Tune trial: the pipeline of ``params['seed']`` in ``<group>/s<seed>``, reporting its deployed success to
    Tune."""
    in_driver_folder(job.cwd)
    seed = int(params["seed"])
    group = job.cfg.wandb_group or job.group_dir.name  # W&B: the seeds of one command in one group
    cfg = dataclasses.replace(job.cfg, seed=seed, out_dir=str(job.group_dir), name=f"s{seed}", wandb_group=group)
    result = pipeline_in_trial(cfg, job.cfg.ray)
    report({"seed": seed, "success_once": deployed_row(result).get("success_once", math.nan), "done": True})


def pipeline_in_trial(cfg: PipelineConfig, ray: RayOptions) -> dict:
    """Run the pipeline ``cfg`` (its ``out_dir``/``name``) inside a Tune trial and return its summary: a pipeline
    finished by an earlier attempt is reused, a failed attempt's partial directory is set aside, and the console
    output goes to ``pipeline.log``."""
    run_dir = Path(cfg.out_dir) / str(cfg.name)
    summary_path = run_dir / "pipeline_summary.json"
    record_attempt(run_dir)
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    if any(p.name != "trial.json" for p in run_dir.iterdir()):
        set_aside(run_dir)
    cfg = dataclasses.replace(cfg, seeds=[], threads=trial_threads(ray), quiet=True)
    with output_to(run_dir / "pipeline.log"):
        return run_pipeline(cfg)


def deployed_row(result: dict) -> dict:
    """The stage row a pipeline summary deployed (empty when no stage was evaluated)."""
    return next((r for r in result["stages"] if r.get("deployed")), {})


def _stage_rows(results: list[dict]) -> list[dict]:
    """Per stage (in pipeline order): algo, per-seed success_once / success_at_end, their means, the interval over
    seeds and the median wall time."""
    order: list[str] = []
    by_stage: dict[str, list[dict]] = {}
    for res in results:
        for r in res["stages"]:
            if r["stage"] not in by_stage:
                order.append(r["stage"])
            by_stage.setdefault(r["stage"], []).append({**r, "seed": res["seed"]})
    rows = []
    for st in order:
        rs = by_stage[st]
        row = {"stage": st, "algo": rs[0]["algo"], "wall_s_median": statistics.median(r["wall_s"] for r in rs)}
        if all("success_once" in r for r in rs):
            so = {r["seed"]: r["success_once"] for r in rs}
            ci = mean_interval(list(so.values()), (0.0, 1.0))
            row.update(
                success_once=statistics.mean(so.values()),
                interval=list(ci[1:]) if ci else None,
                per_seed=so,
                success_at_end=statistics.mean(r["success_at_end"] for r in rs),
                deployed_in=[r["seed"] for r in rs if r.get("deployed")],
            )
        rows.append(row)
    return rows


def seeds_summary(group_dir: Path, results: list[dict]) -> dict:
    """The table over seeds, plus the deployed policy's success per seed and the pipelines' wall time and memory."""
    deployed = {
        res["seed"]: next((r["success_once"] for r in res["stages"] if r.get("deployed")), None) for res in results
    }
    vals = [v for v in deployed.values() if v is not None]
    ci = mean_interval(vals, (0.0, 1.0))
    return {
        "group_dir": str(group_dir),
        "env_id": results[0]["env_id"] if results else None,
        "seeds": [res["seed"] for res in results],
        "stages": _stage_rows(results),
        "deployed": {
            "per_seed": deployed,
            "mean": statistics.mean(vals) if vals else None,
            "interval": list(ci[1:]) if ci else None,
        },
        "wall_s": {res["seed"]: res["wall_s"] for res in results},
        "peak_rss_mb_max": max((res.get("peak_rss_mb") or 0 for res in results), default=0),
    }


def _cells(row: dict) -> list[str]:
    if "success_once" not in row:
        return ["", "", "", "", f"{row['wall_s_median']:.0f}"]
    ci = f"[{row['interval'][0]:.2f}, {row['interval'][1]:.2f}]" if row["interval"] else ""
    per = ", ".join(f"s{s}: {v:.2f}" for s, v in row["per_seed"].items())
    return [f"{row['success_once']:.2f}", ci, per, f"{row['success_at_end']:.2f}", f"{row['wall_s_median']:.0f}"]


HEAD = ("stage", "algo", "success_once (mean)", "95% interval over seeds", "per seed", "success_at_end", "wall s")


def results_markdown(s: dict) -> str:
    lines = [
        f"# rlft pipeline over seeds {s['seeds']}: {s['env_id']}",
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "---|" * len(HEAD),
    ]
    for row in s["stages"]:
        lines.append(f"| {row['stage']} | {row['algo']} | " + " | ".join(_cells(row)) + " |")
    d = s["deployed"]
    per = ", ".join(f"s{k}: {v:.2f}" for k, v in d["per_seed"].items() if v is not None)
    ci = f" [{d['interval'][0]:.2f}, {d['interval'][1]:.2f}]" if d["interval"] else ""
    mean = f"{d['mean']:.2f}" if d["mean"] is not None else "-"
    lines += ["", f"Deployed policy (the gate's choice per seed): mean {mean}{ci} ({per})."]
    walls = ", ".join(f"s{k}: {v:.0f} s" for k, v in s["wall_s"].items())
    peak = s["peak_rss_mb_max"]
    lines += [f"Pipeline wall time per seed: {walls}. Peak memory (max over seeds): {peak or 0:.0f} MB.", ""]
    return "\n".join(lines)


def print_summary(s: dict) -> None:
    t = Table(title=f"rlft pipeline - {s['env_id']}, seeds {s['seeds']}")
    for c in HEAD:
        t.add_column(c, justify="left" if c in ("stage", "algo", "per seed") else "right")
    for row in s["stages"]:
        t.add_row(escape(row["stage"]), escape(row["algo"]), *_cells(row))
    console.print(t)
    d = s["deployed"]
    if d["mean"] is not None:
        console.print(f"deployed policies: mean success_once {d['mean']:.2f} over seeds {s['seeds']}")
    console.print(f"everything is in [bold]{escape(s['group_dir'])}[/bold]")


def run_pipeline_seeds(cfg: PipelineConfig) -> dict:
    """Run ``cfg`` once per seed of ``cfg.seeds`` on Ray Tune and write/print the table over seeds; a seed whose
    pipeline still fails after its retries is named in the error, after the table of the others."""
    from ray import tune

    from rlft.train.pipeline import _parse_stages

    _parse_stages(cfg)  # a typo in a stage config fails before any trial starts
    name = cfg.name or f"pipeline-{cfg.env.env_id}-seeds-{time.strftime('%Y%m%d-%H%M%S')}"
    group_dir = (Path(cfg.out_dir) / name).resolve()
    group_dir.mkdir(parents=True, exist_ok=True)
    same_experiment(group_dir / "pipeline.yaml", cfg)
    console.print(f"pipeline over seeds {cfg.seeds} on Ray Tune: {escape(str(group_dir))}")
    job = SeedsJob(cfg, group_dir)
    space = {"seed": tune.grid_search(list(cfg.seeds))}
    results = run_trials(tune.with_parameters(pipeline_trial, job=job), space, group_dir, cfg.ray)
    done = [
        json.loads((group_dir / f"s{s}" / "pipeline_summary.json").read_text())
        for s in cfg.seeds
        if (group_dir / f"s{s}" / "pipeline_summary.json").is_file()
    ]
    summary = seeds_summary(group_dir, done)
    atomic_write_text(group_dir / "seeds_summary.json", json.dumps(summary, indent=2))
    atomic_write_text(group_dir / "results.md", results_markdown(summary))
    print_summary(summary)
    failed = [(r.config.get("seed"), error_line(r.error)) for r in results if r.error is not None]
    if failed:
        raise TrainingError(
            f"pipeline: seed(s) {[s for s, _ in failed]} failed after {cfg.ray.max_failures} retries: {failed} "
            f"(their logs: {group_dir}/s<seed>/pipeline.log)"
        )
    return summary
