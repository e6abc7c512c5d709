"""``rlft eval --deployed OUT_DIR``: an exported policy (``rlft export``) run by ``PolicyRunner`` through the same
evaluation as a library policy -- the same episode seeds (``seed + i``), success metrics and results -- on the bare
env (no rlft observation-history or chunk wrappers: the runner keeps both itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from rlft.data.obs import Obs
from rlft.deploy.runner import PolicyRunner
from rlft.errors import CheckpointError, ConfigError
from rlft.rollout import EpisodeResult, summarize

T = TypeVar("T")


def deployed_runner(out_dir: str | Path, **options) -> PolicyRunner:
    """``PolicyRunner(out_dir, **options)``, its errors as rlft's (a bad folder or option names the thing at fault)."""
    try:
        return PolicyRunner(out_dir, **options)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def run_episode(runner: PolicyRunner, env, seed: int) -> EpisodeResult:
    """One episode of ``runner`` on ``env`` (an ``rlft.envs.make_env`` env with ``obs_horizon`` 1), reset with
    ``seed``."""
    runner.reset()
    obs, _ = env.reset(seed=seed)
    once, ret, length = False, 0.0, 0
    while True:
        if isinstance(obs, Obs):  # the env stacks one frame; the runner keeps its own history
            action = runner.step(obs.state, {c: v[-1] for c, v in obs.images.items()})
        else:
            action = runner.step(obs)
        obs, r, term, trunc, info = env.step(action)
        success = bool(info.get("success", False))
        once, ret, length = once or success, ret + float(r), length + 1
        if term or trunc:
            return EpisodeResult(seed, once, success, ret, length)


def evaluate_deployed(
    out_dir: str | Path,
    num_episodes: int,
    seed: int,
    env_id: str | None = None,
    max_episode_steps: int | None = None,
    **options,
) -> tuple[dict[str, float], list[EpisodeResult]]:
    """Evaluate the artifact in ``out_dir`` on episodes ``seed .. seed + num_episodes - 1`` (``options``: the
    runner's execution mode); returns the summary (``eval/*``, as ``rlft eval``) and the per-episode results."""
    results = deployed_episodes(out_dir, num_episodes, seed, env_id, max_episode_steps, run_episode, **options)
    return summarize(results), results


def deployed_episodes(
    out_dir: str | Path,
    num_episodes: int,
    seed: int,
    env_id: str | None = None,
    max_episode_steps: int | None = None,
    episode: Callable[[PolicyRunner, Any, int], T] = run_episode,
    **options,
) -> list[T]:
    """``episode(runner, env, seed + i)`` for i < ``num_episodes``: the artifact in ``out_dir`` run on the env it
    was exported for (or ``env_id``), after ``check_env``; ``episode`` may record more than ``run_episode`` does (the
    failure analyses in ``scripts/`` record the task's state step by step)."""
    from rlft.envs import make_env

    runner = deployed_runner(out_dir, **options)
    env_id = env_id or runner.spec.get("env_id")
    if not env_id:
        raise ConfigError(f"env_id: {out_dir}/policy.json names no env; pass --env-id")
    env = make_env(env_id, **({} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}))
    try:
        check_env(runner, env, env_id, out_dir)
        return [episode(runner, env, seed + i) for i in range(num_episodes)]
    finally:
        env.close()


def check_env(runner: PolicyRunner, env, env_id: str, out_dir) -> None:
    """The env's observation, cameras and actions are the artifact's, or one ConfigError says what differs."""
    obs_dim = int(np.prod(env.observation_space.shape))
    cams = {c: list(v) for c, v in getattr(env, "camera_shapes", {}).items()}
    act_dim = int(np.prod(env.action_space.shape))
    if (obs_dim, cams, act_dim) != (runner.obs_dim, runner.cameras, int(runner.spec["action"]["dim"])):
        raise ConfigError(
            f"env_id: {env_id} has observations of {obs_dim} dims, cameras {cams} and {act_dim}-dim actions; "
            f"{out_dir} was exported for {runner.obs_dim}, {runner.cameras} and {runner.spec['action']['dim']}"
        )
