"""OGBench's scripted oracles as the expert: task demos (Markov oracle) and OGBench-style play data (Plan oracle).

Episodes are collected by a pool of worker processes (one env per process). Episode ``i`` is a pure function of
``(seed, i)`` (its env-reset seed, oracle RNG and noise all derive from ``SeedSequence([seed, i])``), so the dataset
does not depend on the number of workers. In ``demos`` mode with ``only_success`` the first ``num_episodes``
successful attempts *in index order* are kept. The dataset is written atomically (``rlft.data.h5io``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from rlft.collect.common import (
    DEMO_DEFAULT_NOISE,
    PLAY_DEFAULT_NOISE,
    PLAY_DEFAULT_STEPS,
    CollectConfig,
    checked_out,
    episode_seed,
    first_kept,
)
from rlft.config import check_choices
from rlft.data.episodes import Episode
from rlft.errors import ConfigError, NoSuccessError
from rlft.utils import exit_with_parent

if TYPE_CHECKING:
    from rich.console import Console


@dataclasses.dataclass
class _Resolved:
    env_id: str
    mode: str
    oracle: str
    action_noise: float
    noise_smoothing: float
    p_stack_range: tuple[float, float] | None
    max_episode_steps: int | None
    seed: int
    mpc: Any = None  # MpcConfig in mode 'mpc'


def _resolve(cfg: CollectConfig) -> _Resolved:
    check_choices(cfg, "collect")  # mode, oracle (Literal fields; a config built in Python is not type-checked)
    if not isinstance(cfg.num_episodes, int) or cfg.num_episodes < 1:
        raise ConfigError(f"collect.num_episodes: must be a positive integer, got {cfg.num_episodes!r}")
    noise = cfg.action_noise
    if noise is None:
        noise = DEMO_DEFAULT_NOISE if cfg.mode == "demos" else PLAY_DEFAULT_NOISE
    if not noise >= 0:
        raise ConfigError(f"collect.action_noise: must be >= 0, got {noise!r}")
    if cfg.max_episode_steps is not None and cfg.max_episode_steps < 1:
        raise ConfigError(f"collect.max_episode_steps: must be >= 1 or null, got {cfg.max_episode_steps!r}")
    if cfg.num_workers is not None and cfg.num_workers < 1:
        raise ConfigError(f"collect.num_workers: must be >= 1 or null, got {cfg.num_workers!r}")
    if cfg.p_stack_range is not None:
        lo, hi = cfg.p_stack_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"collect.p_stack_range: need 0 <= lo <= hi <= 1, got {cfg.p_stack_range!r}")
    oracle = cfg.oracle if cfg.oracle != "auto" else ("markov" if cfg.mode == "demos" else "plan")
    steps = cfg.max_episode_steps
    if steps is None and cfg.mode == "play":
        steps = PLAY_DEFAULT_STEPS
    return _Resolved(
        cfg.env_id,
        cfg.mode,
        oracle,
        float(noise),
        float(cfg.noise_smoothing),
        tuple(cfg.p_stack_range) if cfg.p_stack_range is not None else None,
        steps,
        int(cfg.seed),
        cfg.mpc if cfg.mode == "mpc" else None,
    )


def _env_kwargs(r: _Resolved) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if r.mode == "play":
        kw.update(mode="data_collection", terminate_at_goal=False)
    if r.max_episode_steps is not None:
        kw["max_episode_steps"] = r.max_episode_steps
    return kw


# ------------------------------------------------------------------------------------------------ worker side
_W: dict[str, Any] = {}


def _worker_init(r: _Resolved) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rlft.envs import make_env
    from rlft.envs.oracles import make_oracle

    env = make_env(r.env_id, **_env_kwargs(r))
    if r.mode == "mpc":
        from rlft.collect.mpc import SamplingPlanner
        from rlft.collect.mpc_cube import CubeTask

        task = CubeTask(env, r.mpc)
        _W.update(r=r, env=env, task=task, planner=SamplingPlanner(task, r.mpc, np.random.default_rng(r.seed)))
        return
    _W.update(r=r, env=env, oracle=make_oracle(env, r.oracle, noise=r.action_noise, noise_smoothing=r.noise_smoothing))


def _pool_worker_init(r: _Resolved) -> None:
    from threadpoolctl import threadpool_limits

    exit_with_parent()  # a killed collect takes its workers with it (they would finish their episode first)
    threadpool_limits(1)  # see _results
    _worker_init(r)


def _worker_run(index: int) -> tuple[int, int, Episode, float]:
    from rlft.envs.oracles import collect_demo_episode, collect_play_episode

    r: _Resolved = _W["r"]
    env_seed, rng = episode_seed(r.seed, index)
    t0 = time.perf_counter()
    if r.mode == "mpc":
        from rlft.collect.mpc import collect_mpc_episode

        _W["planner"].rng = rng  # the plan's samples depend on (seed, index) only, not on the worker
        ep = collect_mpc_episode(_W["env"], _W["task"], _W["planner"], env_seed)
    elif r.mode == "demos":
        ep = collect_demo_episode(_W["env"], _W["oracle"], rng, action_noise=r.action_noise, seed=env_seed)
    else:
        ep = collect_play_episode(
            _W["env"],
            _W["oracle"],
            rng,
            oracle_kind=r.oracle,
            action_noise=r.action_noise,
            p_stack_range=r.p_stack_range,
            seed=env_seed,
        )
    return index, env_seed, ep, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ driver side
def _results(r: _Resolved, n_workers: int, indices: Iterator[int]):
    # one BLAS thread for the oracles: their numpy maths then rounds the same whatever the caller's thread settings
    # (with several OpenBLAS threads the play oracle's actions differed by ~1e-8 and one 1000-step episode in 20
    # diverged; docs/notebook/benchmarks.md §2). In a worker process for good, in this process only while collecting.
    from threadpoolctl import threadpool_limits

    if n_workers == 1:
        with threadpool_limits(1):
            _worker_init(r)
            try:
                for i in indices:
                    yield _worker_run(i)
            finally:
                _W["env"].close()
                _W.clear()
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(n_workers, initializer=_pool_worker_init, initargs=(r,)) as pool:
        yield from pool.imap(_worker_run, indices, chunksize=1)
        # leaving the block terminates the pool (also when the consumer stops early)


def run_collect_oracle(cfg: CollectConfig) -> Path:
    """Collect ``cfg.num_episodes`` oracle episodes and write them to ``cfg.out`` (h5 + json sidecar); return the path."""
    from rich.console import Console

    from rlft.data.h5io import write_episodes

    r = _resolve(cfg)
    os.environ.setdefault("MUJOCO_GL", "egl")
    out = checked_out(cfg, r.mode)  # also removes the temporaries of an earlier collect killed while writing
    info = _probe_env_info(r)
    if r.mode == "mpc":  # a task the planner cannot build fails here, once, not in every worker
        _worker_init(r)
        _W["env"].close()
        _W.clear()

    n_workers = cfg.num_workers or os.cpu_count() or 1
    keep_failures = r.mode == "play" or not cfg.only_success
    max_attempts = cfg.num_episodes if keep_failures else int(cfg.max_attempts_factor * cfg.num_episodes) + 10
    n_workers = max(1, min(n_workers, max_attempts))

    console = Console(stderr=True, quiet=not cfg.progress)
    t0 = time.time()
    kept, attempts, steps, ep_seconds = _collect_attempts(cfg, r, n_workers, max_attempts, keep_failures, console)
    elapsed = time.time() - t0
    if not kept:
        raise NoSuccessError(
            f"collect: no successful episode in {len(attempts)} attempts on {r.env_id} "
            f"(action_noise={r.action_noise}); lower the noise or set only_success=false",
            len(attempts),
        )
    order, episodes = first_kept(kept, cfg.num_episodes, len(attempts), console, "episodes")

    env_kwargs = {"control_mode": "ee_delta_pose", **_env_kwargs(r)}
    info = {**info, "env_kwargs": env_kwargs}
    source = _oracle_source(r, len(attempts), keep_failures)
    episode_info = [{"episode_seed": kept[i][0], "attempt_index": i} for i in order]
    write_episodes(out, episodes, info, extra=source, episode_info=episode_info)

    n_tr = sum(len(e) for e in episodes)
    succ = float(np.mean([e.success_once for e in episodes]))
    succ_end = float(np.mean([bool(e.success[-1]) for e in episodes]))
    attempt_rate = float(np.mean(list(attempts.values())))
    console.print(
        f"[bold green]wrote[/] {out}: {len(episodes)} episodes, {n_tr} transitions, "
        f"success {succ:.2f} (at end {succ_end:.2f}; attempts {len(attempts)}, attempt success {attempt_rate:.2f}), "
        f"mean length {n_tr / len(episodes):.1f}, {elapsed:.1f}s wall with {n_workers} worker(s), "
        f"{steps / max(ep_seconds, 1e-9):.0f} env steps/s per worker"
    )
    return out


def _probe_env_info(r: _Resolved) -> dict[str, Any]:
    """Validate the env id / task before starting workers (EnvError names the id); return the env's info."""
    from rlft.envs import env_info, make_env
    from rlft.envs.ogbench_env import task_goal_xyzs

    probe = make_env(r.env_id, **_env_kwargs(r))
    try:
        task_goal_xyzs(probe)
        return env_info(probe)
    finally:
        probe.close()


def _collect_attempts(
    cfg: CollectConfig, r: _Resolved, n_workers: int, max_attempts: int, keep_failures: bool, console: Console
) -> tuple[dict[int, tuple[int, Episode]], dict[int, bool], int, float]:
    """Run attempts in index order (with a progress bar) until enough are kept.

    Returns (kept: index -> (seed, episode), attempts: index -> success, env steps, summed episode seconds)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    kept: dict[int, tuple[int, Episode]] = {}
    attempts: dict[int, bool] = {}
    steps = 0
    ep_seconds = 0.0
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=not cfg.progress) as progress:
        task = progress.add_task(f"collect {r.mode} {r.env_id}", total=cfg.num_episodes, stats="")
        with contextlib.closing(_results(r, n_workers, iter(range(max_attempts)))) as stream:
            for index, seed, ep, secs in stream:
                attempts[index] = ep.success_once
                steps += len(ep)
                ep_seconds += secs
                if keep_failures or ep.success_once:
                    kept[index] = (seed, ep)
                # results arrive in index order (imap), so "first N successes by index" is worker-count independent
                rate = steps / max(ep_seconds, 1e-9)
                stats = f"success {sum(attempts.values())}/{len(attempts)}  {rate:.0f} steps/s/worker"
                progress.update(task, completed=min(len(kept), cfg.num_episodes), stats=stats)
                if len(kept) >= cfg.num_episodes:
                    break
    return kept, attempts, steps, ep_seconds


def _oracle_source(r: _Resolved, num_attempts: int, keep_failures: bool) -> dict[str, Any]:
    """The dataset's provenance (sidecar ``source``) for oracle-collected episodes."""
    if r.mode == "mpc":
        return {
            "collector": "rlft.collect",
            "mode": "mpc",
            "expert": "sampling MPC (rlft.collect.mpc, cost rlft.collect.mpc_cube)",
            "mpc": dataclasses.asdict(r.mpc),
            "seed": r.seed,
            "num_attempts": num_attempts,
            "only_success": not keep_failures,
            "max_episode_steps": r.max_episode_steps,
            "signals": ["planned_actions", "cost_to_go", "cost_spread"],
        }
    return {
        "collector": "rlft.collect",
        "mode": r.mode,
        "oracle": r.oracle,
        "action_noise": r.action_noise,
        "noise_smoothing": r.noise_smoothing if r.oracle == "plan" else None,
        "p_stack_range": list(r.p_stack_range) if r.p_stack_range is not None else "ogbench_default",
        "seed": r.seed,
        "num_attempts": num_attempts,
        "only_success": not keep_failures,
        "max_episode_steps": r.max_episode_steps,
        "reward": "singletask reward of the state before each action ('pre')",
    }
