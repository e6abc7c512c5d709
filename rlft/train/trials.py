"""Many runs on Ray Tune: the one engine behind ``rlft sweep`` and ``rlft pipeline --seeds``.

A *trial* is one ordinary rlft run -- an ``rlft train`` run or a whole ``rlft pipeline`` -- executed in a Ray worker
process with its own run directory, exactly as the command would write it. Ray Tune (Liaw et al. 2018,
https://docs.ray.io/en/latest/tune/) schedules the trials on the resources each asks for (``cpus_per_trial``,
``gpus_per_trial``; fractional GPUs pack small networks onto one card), on this machine or on a cluster, retries a
trial that fails or whose process dies (``max_failures``), stops unpromising ones early (ASHA) and restores an
interrupted experiment: ``<dir>/tune`` holds Tune's state, and calling the same command again resumes it without
re-running finished trials.

What a trial needs on each node of a cluster: rlft installed in the same Python environment as on the driver, and
the run directory (``out_dir``) and the dataset at the same path (a shared filesystem such as NFS), since the driver
reads every trial's summary from there. Start the nodes with ``RAY_worker_niceness=0`` in their environment (Ray
runs workers at nice 15 otherwise, and a trial crawls next to any other busy process); a local instance started by
rlft sets it. Each trial records where it ran in ``<run dir>/trial.json`` (node id, host,
process id, one entry per attempt).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml

from rlft.errors import ConfigError


@dataclasses.dataclass
class RayOptions:
    """Where and how the trials run (Ray Tune)."""

    address: Optional[str] = None
    """Ray cluster to run on: unset starts a local Ray instance sized to this machine; 'auto' (the cluster this node
    belongs to) or 'HOST:PORT' (its head, started with ``ray start --head``) joins an existing cluster."""
    cpus_per_trial: float = 1.0
    """CPU cores Ray reserves for each trial (its torch threads are set to this, at least 1)."""
    gpus_per_trial: float = 0.0
    """GPUs Ray reserves for each trial; a fraction (e.g. 0.25) packs several small trials onto one GPU."""
    max_concurrent: int = 0
    """Trials running at the same time at most; 0 = as many as the cluster's resources allow."""
    max_failures: int = 1
    """Times a failed trial (an error, or its process killed) is retried before it is reported as failed. A training
    run resumes from its last checkpoint when it wrote one (``run.checkpoint_every``); otherwise, and for a whole
    pipeline, the retry starts over, the failed attempt's directory kept as ``<name>.failed-<k>``."""

    def __post_init__(self) -> None:
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError(
                f"ray: cpus_per_trial must be > 0 and gpus_per_trial >= 0, got {self.cpus_per_trial}, "
                f"{self.gpus_per_trial}"
            )
        if self.max_concurrent < 0 or self.max_failures < 0:
            raise ConfigError(
                f"ray: max_concurrent and max_failures must be >= 0, got {self.max_concurrent}, {self.max_failures}"
            )


def start_ray(opts: RayOptions) -> bool:
    """Connect to the cluster at ``opts.address``, or start a local Ray instance (no dashboard); True when this call
    started or joined it (the caller shuts it down), False when Ray was already initialised in this process."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no experiment boxes between rlft's own output
    # Ray runs its workers at nice 15 by default; next to any other busy process a trial then crawls (measured 10x
    # slower beside one running pipeline on 2 cores). Trials are the work here: run them at normal priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        ray.init(
            address=opts.address,
            include_dashboard=False if opts.address is None else None,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except ConnectionError as e:
        raise ConfigError(f"ray.address: cannot reach a Ray cluster at {opts.address!r} ({e})") from None
    return True


def same_experiment(path: Path, cfg: Any) -> None:
    """Save ``cfg`` (a config dataclass) as ``path``, or -- when an earlier call of the same experiment saved one
    there -- refuse a different config: Tune's restore would resume the old trials and silently skip what changed."""
    from rlft.config import save_yaml, to_dict

    if path.is_file():
        # where and how the trials run may change between calls (another cluster, more at a time); what they run not
        old, new = (
            {k: v for k, v in d.items() if k not in ("ray", "quiet")}
            for d in (yaml.safe_load(path.read_text()), yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
        )
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(
                f"name: {path.parent} holds an experiment with another config (differs in {diff}); resuming it "
                "would run the old one -- choose another name, or restore the old config to resume"
            )
        return
    save_yaml(cfg, path)


def in_driver_folder(cwd: str) -> None:
    """Run this trial in the folder the command was started from (``cwd``, when this node has it): Tune starts each
    trial in a folder of its own, where the configs' relative paths would mean nothing."""
    if os.path.isdir(cwd):
        os.chdir(cwd)


def record_attempt(run_dir: Path) -> dict:
    """Append where this attempt runs (node id, host, pid) to ``run_dir/trial.json`` and return that entry."""
    import ray

    from rlft.utils import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "trial.json"
    attempts = json.loads(path.read_text())["attempts"] if path.is_file() else []
    entry = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "attempt": len(attempts) + 1,
    }
    atomic_write_text(path, json.dumps({"attempts": [*attempts, entry]}, indent=2))
    return entry


def set_aside(run_dir: Path) -> None:
    """Move a failed attempt's partial run directory to ``<name>.failed-<k>`` (kept for its logs) so the retry
    starts clean; ``trial.json`` stays with the run."""
    if not run_dir.exists():
        return
    k = 1
    while run_dir.with_name(f"{run_dir.name}.failed-{k}").exists():
        k += 1
    trial = run_dir / "trial.json"
    keep = trial.read_text() if trial.is_file() else None
    shutil.move(str(run_dir), str(run_dir.with_name(f"{run_dir.name}.failed-{k}")))
    if keep is not None:
        run_dir.mkdir(parents=True)
        (run_dir / "trial.json").write_text(keep)


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so child processes' output too) to
    ``path`` for the duration: a trial's console output lands in its run directory, not in Ray's worker logs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_trials(
    trainable: Callable[[dict], None],
    param_space: dict,
    storage: Path,
    opts: RayOptions,
    tune_config: Optional[dict] = None,
):
    """Run ``trainable`` (a Tune function trainable) over ``param_space`` with Tune, storing the experiment in
    ``storage/tune``: restored when an earlier call was interrupted (finished trials are not run again; errored
    ones are retried). Returns Tune's ``ResultGrid``. ``tune_config``: extra ``tune.TuneConfig`` fields (search
    algorithm, scheduler, metric, ``num_samples``)."""
    from ray import tune

    started = start_ray(opts)
    try:
        resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
        fn = tune.with_resources(trainable, resources)
        path = str(Path(storage).resolve() / "tune")
        if tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, restart_errored=True)
        else:
            run_config = tune.RunConfig(
                name="tune",
                storage_path=str(Path(storage).resolve()),
                failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                verbose=0,
            )
            tcfg = tune.TuneConfig(max_concurrent_trials=opts.max_concurrent or None, **(tune_config or {}))
            tuner = tune.Tuner(fn, param_space=param_space, tune_config=tcfg, run_config=run_config)
        return tuner.fit()
    finally:
        if started:
            import ray

            ray.shutdown()


def report(metrics: dict[str, Any]) -> None:
    """Report ``metrics`` to Tune from inside a trial (numbers only; strings are kept for the results table)."""
    from ray import tune

    tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))})


def trial_threads(opts: RayOptions) -> int:
    """torch threads for a trial: its reserved CPUs, at least 1."""
    return max(1, int(opts.cpus_per_trial))


def error_line(error: BaseException) -> str:
    """The line of a failed trial's error worth showing in a table: its last non-empty line (Ray wraps the
    trial's own exception in its traceback), or the exception's type."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__
