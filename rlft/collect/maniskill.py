"""ManiSkill3 tasks' expert: ManiSkill's motion planner, its demos converted by ManiSkill's trajectory replay to state
observations and ``pd_ee_delta_pose`` (``rlft.envs.maniskill_demos``); only ``mode='demos'`` without action noise.
Attempt ``i`` uses the same env seed as an OGBench attempt would; workers take batches of attempts (one simulator and
one replay per batch) and the first ``num_episodes`` successful attempts in index order are kept.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from rlft.collect.common import CollectConfig, attempts_counted, checked_out, episode_seed, first_kept
from rlft.data.episodes import Episode
from rlft.errors import ConfigError, NoSuccessError
from rlft.utils import exit_with_parent

if TYPE_CHECKING:
    from rich.console import Console


def _ms_batch(job: tuple) -> list[tuple[int, int, Episode | None, float, dict[str, Any]]]:
    """Worker: motion-plan and convert a batch of attempts; one result per attempt, in index order."""
    import threading

    from tqdm import tqdm

    from rlft.envs.maniskill_demos import converted_episodes, plan_and_convert, to_rlft_episode, with_reset_obs
    from rlft.envs.maniskill_env import DEFAULT_REWARD_MODE, REWARD_OFFSETS, make_maniskill_env

    tqdm.set_lock(threading.RLock())  # ManiSkill's progress bars: no multiprocessing semaphore to leak at pool exit

    env_id, attempts, limit, keep_failures, root = job
    seeds = [s for _, s in attempts]
    # under the collection's own directory: a worker terminated mid-batch (enough demos arrived) cannot clean up
    # after itself, the collecting process removes the whole directory once its pool is gone
    with tempfile.TemporaryDirectory(prefix="rlft-mp-", dir=root) as tmp:
        path, stats = plan_and_convert(
            env_id, seeds, tmp, tag=str(attempts[0][0]), max_episode_steps=limit, keep_failures=keep_failures
        )
        converted = converted_episodes(path) if path is not None else {}
    # ManiSkill's own rule for a conversion (--only-count-success: success at its last step); every plan is converted
    # (rlft.envs.maniskill_demos says why), so the rule is applied here, before the episodes are used
    converted = {s: ep for s, ep in converted.items() if keep_failures or ep.success[-1]}
    if converted:
        env = make_maniskill_env(env_id, max_episode_steps=limit)
        try:  # first observations as rlft's env gives them at reset (ManiSkill's replay carries stale contacts)
            converted = {s: with_reset_obs(ep, env.reset(seed=s)[0], s) for s, ep in converted.items()}
        finally:
            env.close()
    out = []
    for (index, seed), st in zip(attempts, stats):
        ep, why = None, "plan failed" if not st["plan_success"] else "replay failed"
        if seed in converted:
            ep, why = to_rlft_episode(converted[seed], limit, REWARD_OFFSETS.get(DEFAULT_REWARD_MODE, 0.0))
        st["status"] = why
        out.append((index, seed, ep, st["plan_seconds"] + st["convert_seconds"], st))
    return out


def run_collect_maniskill(cfg: CollectConfig) -> Path:
    """``run_collect`` for a ManiSkill3 task: motion-planned demos in state / pd_ee_delta_pose (see module doc)."""
    from rich.console import Console

    from rlft.data.h5io import write_episodes
    from rlft.envs.maniskill_env import DEFAULT_CONTROL_MODE, DEFAULT_REWARD_MODE, prepare_workers

    _check_maniskill_cfg(cfg)
    out = checked_out(cfg, "demos")
    prepare_workers()  # once here: the spawned workers inherit the Vulkan environment
    info = _probe_env_info(cfg)
    limit = int(info["max_episode_steps"])

    keep_failures = not cfg.only_success
    max_attempts = cfg.num_episodes if keep_failures else int(cfg.max_attempts_factor * cfg.num_episodes) + 10
    n_workers = max(1, min(cfg.num_workers or os.cpu_count() or 1, max_attempts))
    batch = max(1, min(10, -(-cfg.num_episodes // n_workers)))
    jobs = _attempt_jobs(cfg, limit, keep_failures, max_attempts, batch)

    console = Console(stderr=True, quiet=not cfg.progress)
    t0 = time.time()
    kept, statuses, plan_ok, ep_seconds = _run_batches(cfg, jobs, n_workers, keep_failures, console)
    elapsed = time.time() - t0
    if not kept:
        raise NoSuccessError(
            f"collect: no successful motion-planned episode in {len(statuses)} attempts on {cfg.env_id}", len(statuses)
        )
    order, episodes = first_kept(kept, cfg.num_episodes, len(statuses), console, "episodes")
    attempted = attempts_counted(statuses, order, cfg.num_episodes)
    info = {
        **info,
        "env_kwargs": {
            "obs_mode": "state",
            "control_mode": DEFAULT_CONTROL_MODE,
            "reward_mode": DEFAULT_REWARD_MODE,
            "sim_backend": "physx_cpu",
            "max_episode_steps": limit,
        },
    }
    source = _maniskill_source(cfg, limit, keep_failures, attempted, statuses, plan_ok)
    episode_info = [{"episode_seed": kept[i][0], "attempt_index": i} for i in order]
    write_episodes(out, episodes, info, extra=source, episode_info=episode_info)
    n_tr = sum(len(e) for e in episodes)
    console.print(
        f"[bold green]wrote[/] {out}: {len(episodes)} episodes, {n_tr} transitions, mean length "
        f"{n_tr / len(episodes):.1f}; attempts {len(attempted)}: planner success "
        f"{source['planner_success_rate']:.2f}, kept {source['success_rate']:.2f}; "
        f"{ep_seconds / max(1, len(statuses)):.2f}s per attempt per worker (plan + convert), {elapsed:.1f}s wall with "
        f"{n_workers} worker(s)"
    )
    return out


def _check_maniskill_cfg(cfg: CollectConfig) -> None:
    """Refuse collect settings that motion-planned ManiSkill demos do not support (other modes, oracles, noise)."""
    if cfg.mode != "demos":
        raise ConfigError(f"collect.mode: {cfg.env_id} is a ManiSkill task; only 'demos' (motion planning) exists")
    if cfg.oracle != "auto":
        raise ConfigError("collect.oracle: ManiSkill tasks use ManiSkill's motion planner; leave oracle 'auto'")
    if cfg.action_noise:
        raise ConfigError("collect.action_noise: motion-planned ManiSkill demos are collected without action noise")


def _probe_env_info(cfg: CollectConfig) -> dict[str, Any]:
    """Make the env once to check the task has a motion planner (EnvError otherwise); return the env's info."""
    from rlft.envs import env_info, make_env

    probe = make_env(
        cfg.env_id, **({} if cfg.max_episode_steps is None else {"max_episode_steps": cfg.max_episode_steps})
    )
    try:
        from rlft.envs.maniskill_demos import motion_planner

        motion_planner(cfg.env_id)  # EnvError now if there is no planner for the task
        return env_info(probe)
    finally:
        probe.close()


def _attempt_jobs(
    cfg: CollectConfig, limit: int, keep_failures: bool, max_attempts: int, batch: int
) -> Iterator[tuple]:
    """Lazily yield ``_ms_batch``'s jobs less their last field (the temporary directory ``_run_batches`` adds):
    ``batch`` consecutive attempts (index, env seed) each, in index order."""
    return (
        (
            cfg.env_id,
            [(i, episode_seed(cfg.seed, i)[0]) for i in range(b, min(b + batch, max_attempts))],
            limit,
            keep_failures,
        )
        for b in range(0, max_attempts, batch)
    )


def _run_batches(
    cfg: CollectConfig, jobs: Iterator[tuple], n_workers: int, keep_failures: bool, console: Console
) -> tuple[dict[int, tuple[int, Episode]], dict[int, str], dict[int, bool], float]:
    """Run the batches of attempts (in a worker pool unless n_workers is 1) until enough demos are kept.

    Returns (kept: index -> (seed, episode), index -> status, index -> planner success, summed attempt seconds)."""
    kept: dict[int, tuple[int, Episode]] = {}
    statuses: dict[int, str] = {}
    plan_ok: dict[int, bool] = {}
    ep_seconds = 0.0
    with contextlib.ExitStack() as stack:
        # entered before the pool, so left after it: the terminated workers' planner files go with it
        root = stack.enter_context(tempfile.TemporaryDirectory(prefix="rlft-collect-"))
        jobs = ((*job, root) for job in jobs)
        status = stack.enter_context(
            console.status(f"collect demos {cfg.env_id} (motion planning, {n_workers} worker(s))")
        )
        if n_workers == 1:
            stream = map(_ms_batch, jobs)
        else:  # leaving the stack terminates the pool (also when enough demos arrived early)
            pool = mp.get_context("spawn").Pool(n_workers, initializer=exit_with_parent)
            stream = stack.enter_context(pool).imap(_ms_batch, jobs, chunksize=1)
        for results in stream:
            for index, seed, ep, secs, st in results:
                statuses[index] = st["status"]
                plan_ok[index] = st["plan_success"]
                ep_seconds += secs
                if ep is not None and (keep_failures or st["status"] == "ok"):
                    kept[index] = (seed, ep)
            n_ok = sum(v == "ok" for v in statuses.values())
            status.update(
                f"collect demos {cfg.env_id}: {min(len(kept), cfg.num_episodes)}/{cfg.num_episodes} "
                f"kept, success {n_ok}/{len(statuses)} attempts"
            )
            if len(kept) >= cfg.num_episodes:
                break
    return kept, statuses, plan_ok, ep_seconds


def _maniskill_source(
    cfg: CollectConfig,
    limit: int,
    keep_failures: bool,
    attempted: list[int],
    statuses: dict[int, str],
    plan_ok: dict[int, bool],
) -> dict[str, Any]:
    """The dataset's provenance (sidecar ``source``) for motion-planned ManiSkill demos."""
    from rlft.envs.maniskill_env import DEFAULT_REWARD_MODE, REWARD_OFFSETS

    n_success = sum(statuses[i] == "ok" for i in attempted)
    return {
        "collector": "rlft.collect (ManiSkill motion planning)",
        "mode": "demos",
        "oracle": "maniskill_motionplanning",
        "action_noise": 0.0,
        "seed": cfg.seed,
        "num_attempts": len(attempted),
        "only_success": not keep_failures,
        "max_episode_steps": limit,
        "planner_success_rate": sum(plan_ok[i] for i in attempted) / max(1, len(attempted)),
        "success_rate": n_success / max(1, len(attempted)),
        "conversion": "mani_skill.trajectory.replay_trajectory -o state -c pd_ee_delta_pose --record-rewards "
        "--use-first-env-state; episodes cut at the first terminated (= success) step",
        "reward": f"ManiSkill {DEFAULT_REWARD_MODE} {REWARD_OFFSETS.get(DEFAULT_REWARD_MODE, 0.0):+g}",
    }
