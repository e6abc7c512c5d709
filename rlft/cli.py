"""The ``rlft`` command: ``rlft collect | train | eval | pipeline [--config FILE.yaml] [--field.sub VALUE ...]``.

Each subcommand's config is a typed dataclass: ``--config`` loads a YAML file strictly (unknown fields are errors
naming the file and field), and every field can then be overridden on the command line (``--help`` lists them with
their documentation and current values). User errors print one line naming the thing at fault and exit with code 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Literal, Optional

import tyro

os.environ.setdefault("MUJOCO_GL", "egl")
# GNU OpenMP spins while waiting for its other threads; next to another busy process that made 2-thread updates
# 10-100x slower (docs/notebook/benchmarks.md §3). Passive waiting removes the collapse; it must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

USAGE = """usage: rlft {collect,train,eval,pipeline,sweep,report,export,dsrl-check} [--config FILE.yaml] [--field VALUE ...]

  collect    run an expert (OGBench oracle, ManiSkill motion planner) and write a dataset file (.h5, ManiSkill trajectory layout)
  train      one training stage (bc / iql / sac ...), offline on a dataset or online in the env
  eval       evaluate a saved policy (or an exported one, --deployed): success_once, success_at_end, return
  pipeline   collect -> bc -> offline RL -> online RL -> table of success after each stage (--seeds: one per seed, on Ray)
  sweep      one train config over a grid (or search) of overrides x seeds as Ray Tune trials, then a results table
  report     HTML report of run/pipeline directories: curves, videos, results table, diagnosis of failure modes
  export     write a policy as ONNX programs + policy.json for rlft.deploy.PolicyRunner (no torch needed to run it)
  dsrl-check DSRL debugging checklist on run directories' metrics (stage 1 Q check; stage 2 td/q/alpha/entropy)

Run 'rlft <command> --help' for every field of that command's config.
"""


def _split_config(args: list[str]) -> tuple[Optional[str], list[str]]:
    """``--config FILE`` (the YAML that supplies every field's default) and the remaining arguments, for tyro."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    ns, rest = pre.parse_known_args(args)
    return ns.config, rest


def _default_config(name: str) -> Optional[Path]:
    """configs/<name> in the working directory, else next to the installed package (editable installs)."""
    for base in (Path.cwd() / "configs", Path(__file__).resolve().parent.parent / "configs"):
        if (base / name).is_file():
            return base / name
    return None


def cmd_collect(args: list[str]) -> None:
    from rlft.collect import CollectConfig, run_collect
    from rlft.config import load_yaml, parse_cli

    path, rest = _split_config(args)
    default = load_yaml(CollectConfig, path) if path else CollectConfig()
    cfg = parse_cli(CollectConfig, default, rest, prog="rlft collect")
    run_collect(cfg)


def cmd_train(args: list[str]) -> None:
    """``rlft train ALGO [--field VALUE ...]`` or ``rlft train [ALGO] --config STAGE.yaml [--field VALUE ...]``: the
    algorithm is a subcommand whose options are its Config's fields (``rlft train iql --beta 3``); a YAML names its
    algorithm in ``algo``, and naming another one on the command line is refused (its ``algo_cfg`` would not apply)."""
    from rlft.train.runner import run_train

    path, rest = _split_config(args)
    cfg = parse_train_args(path, rest)
    summary = run_train(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "final"} | {"final": summary["final"]}, indent=2))


def parse_train_args(path: Optional[str], rest: list[str]):
    """The TrainConfig of ``rlft train``'s arguments (``--config`` already split off): one tyro subcommand per
    registered algorithm, each defaulting to the YAML's settings where the YAML names it."""
    from typing import Annotated, Union

    import tyro

    from rlft.algos import ALGORITHMS
    from rlft.config import read_yaml
    from rlft.errors import ConfigError
    from rlft.train.config import TrainConfig, train_config_from_dict, train_config_type

    if path:
        default = train_config_from_dict(read_yaml(path), path)
        named = rest[0] if rest and rest[0] in ALGORITHMS else default.algo
        if named != default.algo:
            raise ConfigError(
                f"{path} configures algorithm '{default.algo}' (algo_cfg is its Config); the command line names "
                f"'{named}'. Use a config for '{named}' or drop the subcommand"
            )
        rest = rest[1:] if rest and rest[0] == named else rest
        return tyro.cli(train_config_type(default.algo), default=default, args=rest, prog=f"rlft train {named}")
    options = [
        Annotated[
            train_config_type(name),
            tyro.conf.subcommand(name, default=TrainConfig(algo_cfg=cls.Config()), description=_first_line(cls)),
        ]
        for name, cls in ALGORITHMS.items()
    ]
    return tyro.cli(Union[tuple(options)], args=rest, prog="rlft train")  # noqa: UP007 (a runtime-built union)


def _first_line(obj) -> str:
    return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""


@dataclasses.dataclass
class EvalCommand:
    """Evaluate a saved policy."""

    policy: Optional[str] = None
    """Policy file (.safetensors) written by rlft train/pipeline."""
    deployed: Optional[str] = None
    """Instead of ``policy``: a folder written by ``rlft export``, run by ``rlft.deploy.PolicyRunner`` on the bare env
    (its own observation history and chunk queue) with the same episode seeds."""
    execution: Optional[Literal["open_loop", "receding", "temporal_ensemble"]] = None
    """With ``deployed``: how the runner executes chunks (default: the artifact's, open loop)."""
    replan_every: Optional[int] = None
    """With ``deployed`` and ``execution: receding``: steps between two chunk predictions (default: the chunk
    length)."""
    env_id: Optional[str] = None
    """Environment (default: the one the policy was trained on, from its metadata)."""
    num_episodes: int = 50
    """Number of episodes."""
    seed: int = 100_000
    """Episode i resets with seed ``seed + i``."""
    deterministic: bool = True
    """Deterministic actions (Gaussian mean / flow from zero noise)."""
    num_workers: int = 1
    """Parallel evaluation processes."""
    max_episode_steps: Optional[int] = None
    """Override the env's time limit."""
    out: Optional[str] = None
    """Also write the summary and per-episode results to this JSON file."""

    def __post_init__(self) -> None:
        from rlft.errors import ConfigError

        if self.num_episodes < 1:
            raise ConfigError(f"num_episodes must be >= 1, got {self.num_episodes}")
        if self.num_workers < 1:
            raise ConfigError(f"num_workers must be >= 1, got {self.num_workers}")
        if (self.policy is None) == (self.deployed is None):
            raise ConfigError("rlft eval: give either --policy FILE or --deployed FOLDER")
        if self.policy is not None and (self.execution is not None or self.replan_every is not None):
            raise ConfigError("execution / replan_every: options of --deployed (the library policy runs open loop)")
        if self.deployed is not None and (self.num_workers > 1 or not self.deterministic):
            raise ConfigError("num_workers / deterministic: an exported policy runs deterministically in one process")


def cmd_eval(args: list[str]) -> None:
    from rlft.config import load_yaml, parse_cli
    from rlft.utils import atomic_write_text, set_threads

    path, rest = _split_config(args)
    default = load_yaml(EvalCommand, path) if path else None
    cfg = parse_cli(EvalCommand, default, rest, prog="rlft eval")
    set_threads(1)
    if cfg.deployed is not None:
        summary, results = _eval_deployed(cfg)
    else:
        summary, results = _eval_policy(cfg)
    print(json.dumps(summary, indent=2))
    if cfg.out:
        atomic_write_text(
            cfg.out, json.dumps({"summary": summary, "episodes": [dataclasses.asdict(r) for r in results]}, indent=2)
        )


def _eval_deployed(cfg: EvalCommand):
    from rlft.deploy.evaluate import evaluate_deployed

    options = {"execution": cfg.execution, "replan_every": cfg.replan_every}
    return evaluate_deployed(cfg.deployed, cfg.num_episodes, cfg.seed, cfg.env_id, cfg.max_episode_steps, **options)


def _eval_policy(cfg: EvalCommand):
    from rlft.errors import ConfigError
    from rlft.policies.base import load_policy, policy_extra
    from rlft.rollout import evaluate_policy

    policy = load_policy(cfg.policy)
    extra = policy_extra(cfg.policy)
    env_id = cfg.env_id or extra.get("env_id")
    if not env_id:
        raise ConfigError(f"env_id: {cfg.policy} records no env id; pass --env-id")
    return evaluate_policy(
        policy,
        env_id,
        cfg.num_episodes,
        cfg.seed,
        extra.get("gamma", 0.99),
        extra.get("obs_horizon", 1),
        cfg.max_episode_steps,
        cfg.deterministic,
        cfg.num_workers,
    )


def cmd_pipeline(args: list[str]) -> None:
    from rlft.config import parse_cli
    from rlft.train.pipeline import PipelineConfig, load_pipeline_config, run_pipeline

    path, rest = _split_config(args)
    if path is None:
        found = _default_config("pipeline.yaml")
        if found is None:
            from rlft.errors import ConfigError

            raise ConfigError("no --config given and configs/pipeline.yaml not found")
        path = str(found)
    default = load_pipeline_config(path)
    cfg = parse_cli(PipelineConfig, default, rest, prog="rlft pipeline")
    if cfg.seeds:
        from rlft.train.multiseed import run_pipeline_seeds

        run_pipeline_seeds(cfg)
    else:
        run_pipeline(cfg)


COMMANDS = {"collect": cmd_collect, "train": cmd_train, "eval": cmd_eval, "pipeline": cmd_pipeline}


@dataclasses.dataclass
class ReportCommand:
    """HTML report (metric pages, evaluation videos, results table) and a diagnosis of known failure modes of one or
    several runs; a pipeline directory is expanded into its stages."""

    runs: tyro.conf.Positional[list[str]]
    """Run directories of rlft train or rlft pipeline."""
    out: Optional[str] = None
    """Output folder (default: RUN_DIR/report for one directory, ./rlft-report for several)."""


def cmd_report(args: list[str]) -> None:
    """``rlft report RUN_DIR [RUN_DIR ...] [--out DIR]`` (see rlft.report.build)."""
    from rlft.report.build import build_report, default_out_dir, print_report

    cfg = tyro.cli(ReportCommand, args=args, prog="rlft report")
    res = build_report(cfg.runs, cfg.out if cfg.out is not None else default_out_dir(cfg.runs))
    print_report(res)


COMMANDS["report"] = cmd_report


@dataclasses.dataclass
class DsrlCheckCommand:
    """DSRL debugging checklist on run directories' logged metrics: PASS/FAIL per item; exit status 1 if any fails."""

    run_dirs: tyro.conf.Positional[list[str]]
    """Run directories (rlft train outputs, or pipeline stage folders)."""
    reward_bound: float = 1.0
    """Largest |reward| per env step (bounds |Q| by reward_bound / (1 - gamma))."""

    def __post_init__(self) -> None:
        from rlft.errors import ConfigError

        if not self.run_dirs:
            raise ConfigError("rlft dsrl-check: no run directory given")


def cmd_dsrl_check(args: list[str]) -> None:
    """``rlft dsrl-check RUN_DIR [RUN_DIR ...]`` (see rlft.report.dsrl_check); exit status 1 if an item fails."""
    from rlft.report.dsrl_check import print_checklist

    cfg = tyro.cli(DsrlCheckCommand, args=args, prog="rlft dsrl-check")
    if print_checklist(cfg.run_dirs, cfg.reward_bound):
        sys.exit(1)


COMMANDS["dsrl-check"] = cmd_dsrl_check


@dataclasses.dataclass
class ExportCommand:
    """Write a policy as a deployable artifact: ONNX programs plus policy.json (rlft.deploy.export), checked for
    parity with the library policy; run it with rlft.deploy.PolicyRunner or `rlft eval --deployed OUT_DIR`."""

    policy: tyro.conf.Positional[str]
    """Policy file (.safetensors) written by rlft train/pipeline (any kind, composites included)."""
    out_dir: tyro.conf.Positional[str]
    """Folder to write (replaced if it holds an earlier export; any other non-empty folder is refused)."""
    env_id: Optional[str] = None
    """Environment whose action box and control rate go into policy.json (default: the policy's own)."""
    parity_obs: int = 1000
    """Observations on which the exported programs must reproduce the library's actions."""
    tolerance: float = 1e-5
    """Largest allowed |exported - library| action difference."""
    latency: bool = True
    """Also measure batch-1 latency on this CPU (written to policy.json)."""


def cmd_export(args: list[str]) -> None:
    """``rlft export POLICY OUT_DIR`` (see rlft.deploy.export)."""
    from rlft.deploy.export import export_policy
    from rlft.utils import set_threads

    cfg = tyro.cli(ExportCommand, args=args, prog="rlft export")
    set_threads(1)
    spec = export_policy(cfg.policy, cfg.out_dir, cfg.env_id, cfg.parity_obs, cfg.tolerance, cfg.latency)
    print(
        f"wrote {cfg.out_dir}: {spec['kind']} policy ({spec['policy_class']}), programs "
        f"{', '.join(spec['programs'].values())}; parity max |diff| {spec['parity']['max_abs_diff']:.2g} on "
        f"{spec['parity']['observations']} observations"
        + (
            f"; {spec['latency_cpu_1_thread']['chunk_ms_p50']:.2f} ms per chunk (batch 1, 1 thread)"
            if cfg.latency
            else ""
        )
    )


COMMANDS["export"] = cmd_export


def cmd_sweep(args: list[str]) -> None:
    """``rlft sweep --config SWEEP.yaml [--field VALUE ...]`` (see rlft.train.sweep)."""
    from rlft.config import parse_cli
    from rlft.errors import ConfigError
    from rlft.train.sweep import SweepConfig, load_sweep_config, run_sweep

    path, rest = _split_config(args)
    if path is None and not any(a in ("-h", "--help") for a in rest):
        raise ConfigError("rlft sweep needs --config SWEEP.yaml (e.g. configs/sweep_offline_sac_study.yaml)")
    default = load_sweep_config(path) if path else SweepConfig(base="")
    run_sweep(parse_cli(SweepConfig, default, rest, prog="rlft sweep"))


COMMANDS["sweep"] = cmd_sweep


def main(argv: list[str] | None = None) -> int:
    from rlft.errors import RlftError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        COMMANDS[argv[0]](argv[1:])
    except RlftError as e:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
