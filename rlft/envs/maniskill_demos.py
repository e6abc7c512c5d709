"""ManiSkill3 expert source: motion-planned demonstrations, converted to state observations and pd_ee_delta_pose.

``plan_and_convert(env_id, seeds, workdir)`` runs, in the calling process, exactly ManiSkill's own tools:

1. ``mani_skill.examples.motionplanning.panda.solutions`` (mplib) solves each seed in ``pd_joint_pos`` with
   ``obs_mode="none"``, recorded by ManiSkill's ``RecordEpisode`` (env states, actions) -> ``mp_<tag>.h5/.json``;
2. ``mani_skill.trajectory.replay_trajectory`` replays them from their first env state and converts the actions
   to ``-o state -c pd_ee_delta_pose --record-rewards`` -> ``mp_<tag>.state.pd_ee_delta_pose.physx_cpu.h5/.json``.

The converted file is ManiSkill's trajectory format, which ``rlft.data.h5io.read_episodes`` reads unchanged.
``rlft collect`` then has ``with_reset_obs`` replace each episode's first observation with the one rlft's env gives
at reset for the same seed (ManiSkill's replay runs the episodes back to back in one env, so its first observations
carry the previous episode's last contacts; see ``maniskill_env.FreshResetContacts``), and ``to_rlft_episode`` cut
each episode at its first ``terminated`` step (ManiSkill terminates at success, so the episode ends where the env used
for training and evaluation ends it); the planner keeps moving after success (it lowers the peg and opens the
gripper), and those steps are not part of the task MDP.

Only plans the planner completed successfully are recorded (``keep_failures`` records the others too). Every
recorded plan is converted, failed conversions included, and ``rlft collect`` drops the conversions that fail, as
``--only-count-success`` would: ManiSkill's replay, asked to save successful conversions only, keeps a failed
conversion's steps in its recorder and writes them in front of the next episode it saves (mani_skill 3.0.1:
``replay_trajectory`` skips ``flush_trajectory(save=False)`` on failure), so that episode would start from another
seed's state. Planning uses a generous time limit (``PLAN_LIMIT_FACTOR`` x rlft's) so a slow plan is
finished and then reported as too long, not silently cut.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rlft.data.episodes import Episode
from rlft.errors import EnvError

PLAN_LIMIT_FACTOR = 3


def motion_planner(env_id: str):
    from mani_skill.examples.motionplanning.panda.run import MP_SOLUTIONS

    if env_id not in MP_SOLUTIONS:
        raise EnvError(
            f"{env_id}: ManiSkill has no motion-planning solution for it (tasks with one: "
            f"{', '.join(sorted(MP_SOLUTIONS))})"
        )
    return MP_SOLUTIONS[env_id]


def plan_and_convert(
    env_id: str,
    seeds: Sequence[int],
    workdir: str | Path,
    tag: str = "0",
    max_episode_steps: int | None = None,
    control_mode: str | None = None,
    reward_mode: str | None = None,
    keep_failures: bool = False,
    quiet: bool = True,
) -> tuple[Path | None, list[dict[str, Any]]]:
    """Motion-plan one episode per seed, then convert with ManiSkill's replay; return (converted .h5 or None, stats).
    The file holds every recorded plan's conversion, failed ones too: a caller that wants ManiSkill's
    ``--only-count-success`` keeps the episodes with ``success[-1]`` (as ``rlft collect`` does).

    ``stats[i]`` for ``seeds[i]``: ``seed``, ``plan_success`` (the planner's final step succeeded), ``plan_steps``,
    ``plan_seconds``, ``convert_seconds`` (the batch's conversion time split evenly).
    """
    from rlft.envs.maniskill_env import (
        DEFAULT_CONTROL_MODE,
        DEFAULT_REWARD_MODE,
        _import_maniskill,
        default_max_episode_steps,
    )

    registry = _import_maniskill()
    # load ManiSkill's tools here, before planning and outside the quiet redirect (the helpers below use them)
    import mani_skill.trajectory.replay_trajectory  # noqa: F401
    import mani_skill.utils.wrappers.record  # noqa: F401

    solve = motion_planner(env_id)
    control_mode = control_mode or DEFAULT_CONTROL_MODE
    reward_mode = reward_mode or DEFAULT_REWARD_MODE
    limit = max_episode_steps or default_max_episode_steps(env_id) or registry[env_id].max_episode_steps
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sink = io.StringIO()

    with _redirect(sink) if quiet else contextlib.nullcontext():
        raw_path, stats, n_saved = _record_plans(
            env_id, seeds, workdir, tag, reward_mode, PLAN_LIMIT_FACTOR * limit, solve, keep_failures
        )
        if n_saved == 0:
            return None, stats
        dt = _replay_to_state(raw_path, control_mode, reward_mode)
    for s in stats:
        s["convert_seconds"] = dt / len(stats)
    out = raw_path.with_name(f"{raw_path.stem}.state.{control_mode}.physx_cpu.h5")
    if not out.is_file():
        raise EnvError(f"{env_id}: ManiSkill's replay wrote no {out.name} (its output: {sink.getvalue()[-800:]})")
    return out, stats


def _record_plans(
    env_id: str,
    seeds: Sequence[int],
    workdir: Path,
    tag: str,
    reward_mode: str,
    plan_limit: int,
    solve: Callable,
    keep_failures: bool,
) -> tuple[Path, list[dict[str, Any]], int]:
    """Motion-plan every seed in a ``RecordEpisode`` env (pd_joint_pos); return (raw .h5, stats, number saved)."""
    import gymnasium
    from mani_skill.utils.wrappers.record import RecordEpisode

    env = gymnasium.make(
        env_id,
        obs_mode="none",
        control_mode="pd_joint_pos",
        render_backend="none",
        sim_backend="physx_cpu",
        reward_mode=reward_mode,
        max_episode_steps=plan_limit,
    )
    rec = RecordEpisode(
        env,
        output_dir=str(workdir),
        trajectory_name=f"mp_{tag}",
        save_video=False,
        save_on_reset=False,
        record_reward=False,
        source_type="motionplanning",
        source_desc="ManiSkill's motion-planning solution (mplib), run by rlft collect",
    )
    raw_path = Path(rec._h5_file.filename)
    stats: list[dict[str, Any]] = []
    n_saved = 0
    try:
        for seed in seeds:
            st, save = _plan_one(rec, solve, seed, keep_failures)
            n_saved += int(save)
            stats.append(st)
    finally:
        rec.close()  # writes the json sidecar and closes the env
    return raw_path, stats, n_saved


def _plan_one(rec: Any, solve: Callable, seed: int, keep_failures: bool) -> tuple[dict[str, Any], bool]:
    """Plan one seed; save its trajectory if it succeeded (or ``keep_failures``); return (its stats, saved)."""
    t0 = time.perf_counter()
    try:
        res = solve(rec, seed=int(seed), debug=False, vis=False)
    except Exception as e:  # the planner raises on unreachable poses; ManiSkill's run.py does the same
        print(f"motion planning failed on seed {seed}: {e}")
        res = -1
    ok = res != -1 and bool(np.asarray(res[-1]["success"]).reshape(-1)[0])
    steps = int(np.asarray(res[-1]["elapsed_steps"]).reshape(-1)[0]) if res != -1 else 0
    save = ok or (keep_failures and steps > 0)
    rec.flush_trajectory(save=save)
    stats = {
        "seed": int(seed),
        "plan_success": ok,
        "plan_steps": steps,
        "plan_seconds": time.perf_counter() - t0,
        "convert_seconds": 0.0,
    }
    return stats, save


def _replay_to_state(raw_path: Path, control_mode: str, reward_mode: str) -> float:
    """Convert the recorded plans with ManiSkill's replay (state obs, ``control_mode``, rewards); return seconds.
    Every episode is saved, failed conversions too (``allow_failure``): the module docstring says why."""
    from mani_skill.trajectory import replay_trajectory

    t0 = time.perf_counter()
    args = replay_trajectory.Args(
        traj_path=str(raw_path),
        obs_mode="state",
        target_control_mode=control_mode,
        save_traj=True,
        record_rewards=True,
        reward_mode=reward_mode,
        use_first_env_state=True,
        allow_failure=True,
        num_envs=1,
        sim_backend="physx_cpu",
        render_mode="rgb_array",
    )
    replay_trajectory.main(args)
    return time.perf_counter() - t0


@contextlib.contextmanager
def _redirect(sink: io.StringIO):
    """Silence ManiSkill's progress bars, prints and warnings (its logger holds its own stderr handle)."""
    import logging

    from mani_skill.utils.logging_utils import logger

    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logger.setLevel(level)


def converted_episodes(path: str | Path) -> dict[int, Episode]:
    """Episodes of a converted ManiSkill file keyed by their episode seed (read with rlft's h5 reader, unchanged)."""
    from rlft.data.h5io import read_episodes

    episodes, meta = read_episodes(path)
    side = json.loads(Path(path).with_suffix(".json").read_text())
    ids = [int(e["episode_id"]) for e in side["episodes"]]
    seeds = [int(e["episode_seed"]) for e in side["episodes"]]
    if sorted(ids) != list(range(len(episodes))):
        raise EnvError(f"{path}: sidecar lists episodes {ids} for {len(episodes)} trajectories")
    return {seed: episodes[i] for i, seed in zip(ids, seeds)}


def with_reset_obs(ep: Episode, reset_obs: np.ndarray, seed: int, atol: float = 1e-4) -> Episode:
    """``ep`` with its first observation replaced by ``reset_obs``, the observation rlft's env returns at reset for
    the same seed (the same initial state, with that state's own contacts).

    Both describe one simulator state, so they may differ only in contact flags: an entry may differ beyond ``atol``
    only where ``reset_obs`` holds 0 or 1. Anything else means the replay did not start from the seed's reset state,
    and is refused."""
    first = np.asarray(ep.obs[0])
    reset_obs = np.asarray(reset_obs, dtype=first.dtype)
    if reset_obs.shape != first.shape:
        raise EnvError(f"seed {seed}: reset observation has shape {reset_obs.shape}, the replay's {first.shape}")
    off = np.flatnonzero(np.abs(reset_obs - first) > atol)
    not_flags = [int(i) for i in off if reset_obs[i] not in (0.0, 1.0)]
    if not_flags:
        raise EnvError(
            f"seed {seed}: the replayed episode does not start from the seed's reset state (observation entries "
            f"{not_flags} differ: {first[not_flags]} against {reset_obs[not_flags]})"
        )
    obs = np.array(ep.obs, copy=True)
    obs[0] = reset_obs
    return dataclasses.replace(ep, obs=obs)


def to_rlft_episode(ep: Episode, max_episode_steps: int, reward_offset: float = 0.0) -> tuple[Episode | None, str]:
    """Cut at the first terminated step (ManiSkill: success or failure); return (episode, "ok") or (None, why).
    ``reward_offset`` is added to every reward (``maniskill_env.REWARD_OFFSETS``: the env's rewards are shifted).

    An episode that does not terminate within ``max_episode_steps`` is returned cut at the limit with its last step
    marked truncated (``why`` = "timeout") -- the caller decides whether to keep failures.
    """
    term = np.flatnonzero(ep.terminated)
    if len(term) and term[0] < max_episode_steps:
        T = int(term[0]) + 1
        why = "ok" if bool(ep.success[T - 1]) else "failed"
        trunc = np.zeros(T, bool)
    else:
        T = min(len(ep), max_episode_steps)
        why = "timeout"
        trunc = np.zeros(T, bool)
        trunc[-1] = True
    out = Episode(
        obs=ep.obs[: T + 1].astype(np.float32),
        actions=ep.actions[:T].astype(np.float32),
        rewards=(ep.rewards[:T] + reward_offset).astype(np.float32),
        terminated=ep.terminated[:T].astype(bool),
        truncated=trunc,
        success=ep.success[:T].astype(bool),
    )
    return out, why
