"""``rlft pipeline``: collect -> bc -> offline RL -> online RL, each stage starting from the previous stage's policy.

The pipeline YAML names the stage configs (ordinary ``rlft train`` YAMLs) and what they share::

    env: {env_id: cube-single-singletask-v0, act_horizon: 5}
    collect: {mode: demos, num_episodes: 30, action_noise: 0.3}
    stages:
      - {name: bc, config: bc.yaml}
      - {name: offline, config: offline_iql.yaml}
      - {name: online, config: online_sac.yaml, overrides: {steps: 30000}}

For every stage the pipeline sets ``env``, ``run.seed``, ``run.out_dir``/``run.name`` (inside the pipeline's run
directory), ``dataset`` (the collected file) and ``init_policy`` (the previous stage's ``policy_<handoff>``); the
stage's ``overrides`` are merged into its YAML before strict parsing. A stage with ``base_from_previous`` (DSRL's
stage 1) gets the previous stage's policy as ``base_policy`` instead, and a fresh latent actor. A stage with
``rollout_episodes`` first rolls the previous stage's policy out and trains a fresh policy on those rollouts
(distillation) or, with ``rollouts_into_dataset``, on the dataset they join (self-imitation; every later stage
trains on the grown dataset). The result is a table
of success after each stage, also written to ``results.md`` and ``pipeline_summary.json``.

Deploy gate (``rlft.train.gate``): every stage is evaluated on the same fixed seeds; the stage with the highest
success (the later one on a tie) is deployed -- its policy is copied to ``<run>/deploy/policy.safetensors`` with
``deploy.json`` saying where it came from -- and a stage worse than an earlier one beyond the 95 % interval of the
difference is printed as a regression, with the diagnosis of its run (``rlft.report.diagnose``). It is never
deployed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Literal, Optional

import tyro
from rich.markup import escape
from rich.table import Table

from rlft.collect import CollectConfig, run_collect
from rlft.config import read_yaml, save_yaml, to_dict
from rlft.data.h5io import merge_datasets, sidecar_path
from rlft.errors import ConfigError, NoSuccessError
from rlft.train.config import EnvConfig, EvalConfig, train_config_from_dict
from rlft.train.runner import run_train
from rlft.train.trials import RayOptions
from rlft.utils import atomic_write_text, make_console

console = make_console()


@dataclasses.dataclass
class StageSpec:
    """One stage of the pipeline."""

    name: str
    """Stage name (also the sub-directory of the pipeline run)."""

    def __post_init__(self) -> None:
        from rlft.config import check_dir_name

        check_dir_name(self.name, "stages[].name")
        if self.rollout_episodes < 0:
            raise ConfigError(f"stages[{self.name}].rollout_episodes: >= 0, got {self.rollout_episodes}")
        if self.rollout_episodes == 0 and (self.rollouts_into_dataset or not self.rollout_only_success):
            raise ConfigError(
                f"stages[{self.name}]: rollouts_into_dataset and rollout_only_success act on the stage's rollouts; "
                "set rollout_episodes > 0"
            )

    config: str
    """Path of the stage's ``rlft train`` YAML (relative paths are resolved against the pipeline YAML's folder)."""
    overrides: dict = dataclasses.field(default_factory=dict)
    """Nested fields merged into the stage YAML before it is parsed, e.g. ``{steps: 1000, algo_cfg: {beta: 3}}``."""
    inherit_critic: bool = False
    """Warm-start this stage's critics from the previous stage's training state (``init_critic``)."""
    base_from_previous: bool = False
    """Steer the previous stage's policy instead of continuing it (DSRL): this stage's ``base_policy`` is the previous
    stage's handed-off policy and it starts a fresh latent actor (no ``init_policy``)."""
    rollout_episodes: int = 0
    """> 0: before this stage, roll the previous stage's policy out (deterministic actions) until this many episodes
    are kept (``rlft collect --mode policy``; reset seeds from ``seed + 1000 x stage index``, so they differ from the
    demos' and from every other stage's). The stage starts a fresh policy of ``policy_kind`` and trains on those
    rollouts alone (distillation, e.g. a ``bc`` stage after DSRL: a standalone flow policy), or, with
    ``rollouts_into_dataset``, on the dataset they join."""
    rollout_only_success: bool = True
    """Keep only the successful rollouts (False: every rollout)."""
    rollouts_into_dataset: bool = False
    """Self-imitation: append the kept rollouts to the pipeline's dataset, for this stage and every later one, instead
    of training on them alone. With successful rollouts only, the policy imitates its own successes next to the demos
    (filtered behaviour cloning of the policy's own data: Oh et al. 2018, "Self-Imitation Learning"; the
    self-improvement loop of Bousmalis et al. 2023, "RoboCat"); repeated, each round adds the successes of a better
    policy."""


@dataclasses.dataclass
class PipelineConfig:
    """The whole job: expert data, then the training stages in order."""

    stages: list[StageSpec]
    """Training stages, in order; each starts from the previous stage's policy."""
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    """Environment and chunking, shared by every stage and by collection."""
    collect: CollectConfig = dataclasses.field(default_factory=CollectConfig)
    """Expert-data collection (skipped when ``dataset`` is set)."""
    also_collect: list[CollectConfig] = dataclasses.field(default_factory=list)
    """More sources appended to the same dataset (e.g. OGBench-style play data next to task demos); each gets the
    pipeline's env id and a seed offset."""
    dataset: Optional[str] = None
    """Use this existing dataset file instead of collecting one."""
    eval: EvalConfig = dataclasses.field(default_factory=lambda: EvalConfig(num_episodes=100))
    """Evaluation settings applied to every stage (episodes, seeds, workers): every stage is evaluated on the same
    seeds, 100 episodes by default, so the deploy gate can tell stages apart (a 95 % interval of about +-0.1)."""
    policy_kind: Optional[str] = None
    """Override ``algo_cfg.policy.kind`` ('gaussian' or 'flow') of the first stage (later stages inherit it)."""
    handoff: Literal["final", "best"] = "final"
    """Which policy of a stage the next stage starts from: its final one, or its best by eval success_once."""
    budget_scale: float = 1.0
    """Multiply every stage's ``steps`` (and eval.every) and every collection's ``num_episodes`` by this (at least 1
    each), e.g. 0.01 for a smoke run."""
    seed: int = 0
    """Seed for collection and every stage."""
    seeds: list[int] = dataclasses.field(default_factory=list)
    """Run one whole pipeline per seed (``seed`` unused), as Ray Tune trials in parallel as resources allow, and end
    with the per-stage table over seeds (mean, 95 % interval, per-seed values; rlft.train.multiseed). Empty: one
    pipeline with ``seed``."""
    ray: tyro.conf.OmitArgPrefixes[RayOptions] = dataclasses.field(default_factory=RayOptions)
    """With ``seeds``: where the pipelines run (``--address``, ``--cpus-per-trial`` ...; ``ray:`` in YAML)."""
    out_dir: str = "runs"
    """Parent folder of the pipeline's run directory."""
    name: Optional[str] = None
    """Run directory name (default: pipeline-<env>-s<seed>-<timestamp>; with ``seeds``, the folder holding one
    ``s<seed>`` directory per seed, default pipeline-<env>-seeds-<timestamp>)."""
    wandb_group: Optional[str] = None
    """W&B group of every stage's run (``run.track``); default: the pipeline's directory name. With ``seeds`` (or in
    a sweep) every seed's pipeline joins the group of the whole command."""
    threads: int = 1
    """torch threads for every stage."""
    quiet: bool = False
    """Suppress progress bars."""

    def __post_init__(self) -> None:
        from rlft.config import check_dir_name

        check_dir_name(self.name, "name")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: each seed once, got {self.seeds}")


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    from rlft.config import from_dict

    path = Path(path)
    cfg = from_dict(PipelineConfig, read_yaml(path), str(path))
    for st in cfg.stages:  # resolve stage config paths against the pipeline file's folder
        p = Path(st.config)
        if not p.is_absolute() and not p.exists():
            st.config = str(path.parent / p)
    return cfg


def _parse_stages(cfg: PipelineConfig) -> list[dict]:
    """Every stage's YAML merged with its overrides and parsed now, so a typo fails before minutes of collection."""
    first = cfg.stages[0] if cfg.stages else None
    for flag in ("inherit_critic", "base_from_previous", "rollout_episodes"):
        if first is not None and getattr(first, flag):
            raise ConfigError(f"stages[0].{flag}: the first stage ({first.name}) has no previous stage")
    joining = [st.name for st in cfg.stages if st.rollouts_into_dataset]
    if joining and cfg.dataset and Path(cfg.dataset).suffix != ".h5":
        raise ConfigError(
            f"dataset: stage {joining[0]} appends its rollouts to the dataset, which must then be an rlft .h5 file; "
            f"{cfg.dataset} is not"
        )
    stage_dicts = []
    for st in cfg.stages:
        d = _deep_merge(read_yaml(st.config), st.overrides)
        train_config_from_dict(d, st.config)
        stage_dicts.append(d)
    return stage_dicts


def _handoff(st: StageSpec, prev_policy: str | None, prev_state: str | None) -> dict:
    """What a stage takes from the one before, by kind: a continued stage starts from its policy (and, with
    ``inherit_critic``, its critics); a steering stage (``base_from_previous``: DSRL, residual RL) trains a fresh actor
    through it as the frozen base policy; a stage trained on rollouts (``rollout_episodes``: distillation,
    self-imitation) and the first stage start fresh."""
    fresh = prev_policy is None or st.base_from_previous or st.rollout_episodes > 0
    return {
        "init_policy": None if fresh else prev_policy,
        **({"base_policy": prev_policy} if st.base_from_previous else {}),
        "init_critic": prev_state if st.inherit_critic else None,
    }


def _rollout_data(
    cfg: PipelineConfig, index: int, prev_policy: str, run_dir: Path, dataset: str
) -> tuple[str, str, dict]:
    """Stage ``index``'s rollouts of the previous stage's policy (``rlft collect --mode policy``). Returns (this
    stage's data, the pipeline's dataset from now on, the table row); with ``rollouts_into_dataset`` both are the
    dataset grown by the rollouts, otherwise the rollouts alone and the unchanged dataset."""
    st, prev = cfg.stages[index], cfg.stages[index - 1]
    tc = time.time()
    n = max(1, round(st.rollout_episodes * cfg.budget_scale))
    console.rule(escape(f"stage {st.name}: {n} rollouts of {prev.name}'s policy"))
    data_dir = run_dir / "data"
    try:
        rollouts = _collect_rollouts(cfg, st, index, prev_policy, n, data_dir)
    except NoSuccessError as e:
        raise NoSuccessError(
            f"stages[{index}] ({st.name}): no successful rollout of {prev.name}'s policy in {e.attempts} attempts "
            f"on {cfg.env.env_id}: nothing to learn from (rollout_only_success: false keeps failures too)",
            e.attempts,
        ) from None
    meta = json.loads(sidecar_path(rollouts).read_text())
    row = {
        "stage": f"{st.name} data",
        "algo": f"rollouts of {prev.name}",
        "wall_s": time.time() - tc,
        "kept": len(meta["episodes"]),
        "attempts": meta["source"]["num_attempts"],
        "attempt_success": meta["source"]["success_rate"],
        "env_steps": meta["source"]["env_steps"],
    }
    if not st.rollouts_into_dataset:
        return str(rollouts), dataset, row
    grown = str(merge_datasets([Path(dataset), rollouts], data_dir / f"{st.name}-dataset.h5"))
    return grown, grown, row


def _collect_rollouts(cfg: PipelineConfig, st: StageSpec, index: int, policy: str, n: int, data_dir: Path) -> Path:
    """``rlft collect --mode policy`` for stage ``index``: its reset seeds from ``seed + 1000 x index``."""
    return run_collect(
        CollectConfig(
            env_id=cfg.env.env_id,
            mode="policy",
            policy=policy,
            num_episodes=n,
            seed=cfg.seed + 1000 * index,
            max_episode_steps=cfg.env.max_episode_steps,
            only_success=st.rollout_only_success,
            num_workers=cfg.eval.num_workers,
            out=str(data_dir / f"{st.name}-rollouts.h5"),
            progress=not cfg.quiet,
        )
    )


def _stage_config(cfg: PipelineConfig, st: StageSpec, d: dict, data: str, handoff: dict, run_dir: Path):
    """The stage's TrainConfig: its YAML with the pipeline's env, evaluation, data, seed and budget imposed."""
    every = int(d.get("eval", {}).get("every", 0) * cfg.budget_scale)
    d = _deep_merge(
        d,
        {
            "env": to_dict(cfg.env),
            "eval": _deep_merge(to_dict(cfg.eval), {"every": every}),
            "dataset": data,
            **handoff,
            "run": {
                "seed": cfg.seed,
                "out_dir": str(run_dir),
                "name": st.name,
                "threads": cfg.threads,
                "wandb_group": d.get("run", {}).get("wandb_group") or cfg.wandb_group or run_dir.name,
            },
        },
    )
    d["steps"] = max(1, int(d.get("steps", 10_000) * cfg.budget_scale))
    if cfg.policy_kind is not None and handoff["init_policy"] is None and not st.base_from_previous:
        d = _deep_merge(d, {"algo_cfg": {"policy": {"kind": cfg.policy_kind}}})
    return train_config_from_dict(d, st.config)


def _stage_row(st: StageSpec, tcfg, summary: dict) -> dict:
    """The pipeline table's row of a trained stage (its final evaluation, when it had one)."""
    ev = summary["final"]  # None when the stage was not evaluated (eval.num_episodes 0)
    n_eval = 0 if ev is None else int(ev["eval/num_episodes"])
    scores = (
        {}
        if ev is None
        else {
            "success_once": ev["eval/success_once"],
            "success_at_end": ev["eval/success_at_end"],
            "return": ev["eval/return"],
            "best_success_once": summary["best_success_once"],
            "successes": int(round(ev["eval/success_once"] * n_eval)),
            "episodes": n_eval,
        }
    )
    return {
        "stage": st.name,
        "algo": tcfg.algo,
        "mode": tcfg.mode,
        "steps": tcfg.steps,
        **scores,
        "wall_s": summary["wall_s"],
        "run_dir": summary["run_dir"],
        "policy": str(Path(summary["run_dir"]) / "checkpoints" / "policy_final.safetensors"),
        "dataset": tcfg.dataset,
    }


def run_pipeline(cfg: PipelineConfig) -> dict:
    t0 = time.time()
    name = cfg.name or f"pipeline-{cfg.env.env_id}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out_dir) / name
    if (run_dir / "pipeline_summary.json").exists():
        raise ConfigError(f"name: {run_dir} already holds a finished pipeline; choose another name")
    stage_dicts = _parse_stages(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run_dir / "pipeline.yaml")
    rows: list[dict] = []
    dataset = cfg.dataset
    if not dataset:
        tc = time.time()
        dataset, label = collect_dataset(
            [cfg.collect, *cfg.also_collect], cfg.env.env_id, cfg.seed, run_dir / "data", cfg.budget_scale
        )
        rows.append({"stage": "collect", "algo": f"expert ({label})", "wall_s": time.time() - tc})
    first_dataset = dataset
    prev_policy, prev_state = None, None
    for i, (st, d) in enumerate(zip(cfg.stages, stage_dicts)):
        data = dataset
        if st.rollout_episodes > 0:
            data, dataset, row = _rollout_data(cfg, i, prev_policy, run_dir, dataset)
            rows.append(row)
        tcfg = _stage_config(cfg, st, d, data, _handoff(st, prev_policy, prev_state), run_dir)
        console.rule(escape(f"stage {st.name}: {tcfg.algo} ({tcfg.mode}, {tcfg.steps} steps)"))
        summary = run_train(tcfg, quiet=cfg.quiet)
        rows.append(_stage_row(st, tcfg, summary))
        prev_policy = str(Path(summary["run_dir"]) / "checkpoints" / f"policy_{cfg.handoff}.safetensors")
        prev_state = str(Path(summary["run_dir"]) / "checkpoints" / "state.pt")
    return _finish(cfg, run_dir, rows, (first_dataset, dataset), prev_policy, time.time() - t0)


def _finish(
    cfg: PipelineConfig,
    run_dir: Path,
    rows: list[dict],
    datasets: tuple[str, str],
    final_policy: str | None,
    wall_s: float,
) -> dict:
    """The deploy gate, then pipeline_summary.json, results.md and the printed table."""
    import resource

    peak_mb = (
        max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        / 1024.0
    )
    decision = deploy(rows, run_dir)
    result = {
        "run_dir": str(run_dir),
        "env_id": cfg.env.env_id,
        "seed": cfg.seed,
        "dataset": datasets[0],
        "final_dataset": datasets[1],
        "stages": rows,
        "wall_s": wall_s,
        "final_policy": final_policy,
        "peak_rss_mb": peak_mb,
        "deployed": decision["deployed"],
        "deployed_policy": decision.get("policy"),
        "regressions": decision["regressions"],
    }
    atomic_write_text(run_dir / "pipeline_summary.json", json.dumps(result, indent=2))
    atomic_write_text(run_dir / "results.md", results_markdown(result))
    print_results(result)
    return result


def deploy(rows: list[dict], run_dir: Path) -> dict:
    """The deploy gate over the evaluated stage rows (``rlft.train.gate``): marks ``row['deployed']``, adds each row's
    ``interval``, copies the deployed stage's policy to ``run_dir/deploy/`` and returns the decision."""
    import shutil

    from rlft.train.gate import gate
    from rlft.utils import atomic_path

    decision = gate([r for r in rows if r.get("episodes")])
    for r in rows:
        if r["stage"] in decision["intervals"]:
            r["interval"] = list(decision["intervals"][r["stage"]])
        r["deployed"] = r["stage"] == decision["deployed"]
    chosen = next((r for r in rows if r["deployed"]), None)
    if chosen is not None:
        out = run_dir / "deploy"
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "policy.safetensors") as tmp:
            shutil.copyfile(chosen["policy"], tmp)
        decision["policy"] = str(out / "policy.safetensors")
        atomic_write_text(
            out / "deploy.json",
            json.dumps(
                {
                    "stage": chosen["stage"],
                    "algo": chosen["algo"],
                    "source": chosen["policy"],
                    "success_once": chosen["success_once"],
                    "episodes": chosen["episodes"],
                    "interval": chosen["interval"],
                    "regressions": decision["regressions"],
                },
                indent=2,
            ),
        )
    return decision


def _print_regressions(result: dict) -> None:
    from rlft.report.diagnose import diagnose
    from rlft.report.runs import load_run

    by_stage = {r["stage"]: r for r in result["stages"]}
    for reg in result.get("regressions", []):
        lo, hi = reg["interval"]
        console.print(
            f"[bold red]regression[/] stage {escape(reg['stage'])} is below stage {escape(reg['from'])} by "
            f"{-reg['diff']:.2f} (95% interval of the difference [{lo:+.2f}, {hi:+.2f}]); not deployed"
        )
        try:
            run = load_run(by_stage[reg["stage"]]["run_dir"])
            findings = [f for f in diagnose(run.metrics, run.context()) if f.severity in ("error", "warning")]
        except Exception as e:  # the decision stands without a diagnosis; say why there is none
            console.print(f"  (no diagnosis: {escape(str(e))})")
            continue
        for f in findings[:5]:
            console.print(f"  {escape(f.one_line())}", highlight=False)
        if not findings:
            console.print("  the diagnosis rules found nothing; rlft report shows the curves", highlight=False)


def collect_dataset(
    sources: list[CollectConfig], env_id: str, seed: int, data_dir: Path, budget_scale: float = 1.0
) -> tuple[str, str]:
    """Run every collection (``env_id`` and seed ``seed + 7919 i`` imposed, episodes scaled by ``budget_scale``) into
    ``data_dir`` and merge them into one file. Returns ``(dataset path, label like '30 demos + 20 play')``."""
    sources = [
        dataclasses.replace(
            c,
            env_id=env_id,
            seed=seed + 7919 * i,
            num_episodes=max(1, round(c.num_episodes * budget_scale)),
            out=str(Path(data_dir) / f"source{i}-{c.mode}.h5"),
        )
        for i, c in enumerate(sources)
    ]
    parts = [run_collect(c) for c in sources]
    dataset = str(parts[0]) if len(parts) == 1 else str(merge_datasets(parts, Path(data_dir) / "dataset.h5"))
    return dataset, " + ".join(f"{c.num_episodes} {c.mode}" for c in sources)


def results_markdown(result: dict) -> str:
    lines = [
        f"# rlft pipeline: {result['env_id']} (seed {result['seed']})",
        "",
        "| stage | algo | success_once | 95% interval | success_at_end | return | wall (s) | deployed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["stages"]:
        if "success_once" in r:
            lines.append(
                f"| {r['stage']} | {r['algo']} | {r['success_once']:.2f} | {_interval(r)} | "
                f"{r['success_at_end']:.2f} | {r['return']:.1f} | {r['wall_s']:.0f} | {_mark(r)} |"
            )
        else:
            lines.append(f"| {r['stage']} | {_algo_label(r)} | | | | | {r['wall_s']:.0f} | |")
    for reg in result.get("regressions", []):
        lo, hi = reg["interval"]
        lines.append(
            f"\nRegression: {reg['stage']} is below {reg['from']} by {-reg['diff']:.2f} (95% interval of the "
            f"difference [{lo:+.2f}, {hi:+.2f}]); not deployed."
        )
    lines += [
        "",
        f"Deployed: `{result.get('deployed_policy')}` (stage {result.get('deployed')}).",
        f"Total wall time: {result['wall_s']:.0f} s. Run directory: `{result['run_dir']}`",
        "",
    ]
    return "\n".join(lines)


def print_results(result: dict) -> None:
    t = Table(title=f"rlft pipeline - {result['env_id']} (seed {result['seed']})")
    for c in ("stage", "algo", "success_once", "95% interval", "success_at_end", "return", "wall (s)", "deployed"):
        t.add_column(c, justify="right" if c not in ("stage", "algo") else "left")
    for r in result["stages"]:
        if "success_once" in r:
            t.add_row(
                escape(r["stage"]),
                escape(r["algo"]),
                f"{r['success_once']:.2f}",
                _interval(r),
                f"{r['success_at_end']:.2f}",
                f"{r['return']:.1f}",
                f"{r['wall_s']:.0f}",
                _mark(r),
            )
        else:
            t.add_row(escape(r["stage"]), escape(_algo_label(r)), "", "", "", "", f"{r['wall_s']:.0f}", "")
    console.print(t)
    _print_regressions(result)
    if result.get("deployed_policy"):
        console.print(
            f"deployed: stage [bold]{escape(result['deployed'])}[/bold] -> {escape(str(result['deployed_policy']))}"
        )
    console.print(f"total {result['wall_s']:.0f} s; everything is in [bold]{escape(str(result['run_dir']))}[/bold]")


def _algo_label(r: dict) -> str:
    """A table row's algo cell; a rollouts row adds what it kept and the env steps it took."""
    if "env_steps" not in r:
        return r["algo"]
    return f"{r['algo']}: {r['kept']} of {r['attempts']} kept, {r['env_steps']} env steps"


def _interval(r: dict) -> str:
    return f"[{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]" if r.get("interval") else ""


def _mark(r: dict) -> str:
    return "deployed" if r.get("deployed") else ""
