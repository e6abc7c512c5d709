"""A trained rlft policy as the expert (``mode='policy'``): its rollouts, e.g. the data of a distillation."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlft.collect.common import CollectConfig, attempts_counted, checked_out, episode_seed, first_kept
from rlft.data.episodes import Episode
from rlft.errors import ConfigError, NoSuccessError

if TYPE_CHECKING:
    from rich.console import Console

    from rlft.policies.base import Policy


def run_collect_policy(cfg: CollectConfig) -> Path:
    """``run_collect`` with a trained policy as the expert (``mode='policy'``): attempt ``i`` resets the env with
    the same seed as an oracle attempt would (``episode_seed(seed, i)``); attempts run in rounds (batched policy
    queries over parallel envs, ``num_workers`` processes) and, with ``only_success``, the first ``num_episodes``
    successful attempts in index order are kept. Observations are stored unstacked, actions as executed."""
    from rich.console import Console

    from rlft.data.h5io import write_episodes
    from rlft.envs import env_family

    _check_policy_cfg(cfg)
    out = checked_out(cfg, "policy")
    policy, extra, obs_horizon, info = _load_checked_policy(cfg)

    keep_failures = not cfg.only_success
    max_attempts = cfg.num_episodes if keep_failures else int(cfg.max_attempts_factor * cfg.num_episodes) + 10
    n_workers = max(1, min(cfg.num_workers or os.cpu_count() or 1, cfg.num_episodes))
    family = env_family(cfg.env_id)
    if n_workers > 1 and family.prepare is not None:
        family.prepare()  # once here: the spawned workers inherit it (ManiSkill's Vulkan environment)
    console = Console(stderr=True, quiet=not cfg.progress)
    t0 = time.time()
    kept, attempts, lengths = _rollout_rounds(
        cfg, policy, extra.get("gamma", 0.99), obs_horizon, n_workers, max_attempts, keep_failures, console
    )
    elapsed = time.time() - t0
    if not kept:
        raise NoSuccessError(
            f"collect: no successful rollout of {cfg.policy} in {len(attempts)} attempts on "
            f"{cfg.env_id}; set only_success=false to keep failures",
            len(attempts),
        )
    order, episodes = first_kept(kept, cfg.num_episodes, len(attempts), console, "rollouts")
    info.pop("obs_horizon", None)  # stored observations are unstacked
    info["obs_dim"] = int(episodes[0].obs.shape[1])
    attempted = attempts_counted(attempts, order, cfg.num_episodes)
    source = _policy_source(cfg, policy, attempts, attempted, keep_failures)
    source["env_steps"] = sum(lengths.values())
    episode_info = [{"episode_seed": kept[i][0], "attempt_index": i} for i in order]
    write_episodes(out, episodes, info, extra=source, episode_info=episode_info)
    n_tr = sum(len(e) for e in episodes)
    console.print(
        f"[bold green]wrote[/] {out}: {len(episodes)} rollouts, {n_tr} transitions, mean length "
        f"{n_tr / len(episodes):.1f}; attempt success {source['success_rate']:.2f} "
        f"({len(attempted)} attempts, {source['env_steps']} env steps), {elapsed:.1f}s wall with {n_workers} worker(s)"
    )
    return out


def _policy_source(
    cfg: CollectConfig, policy: Policy, attempts: dict[int, bool], attempted: list[int], keep_failures: bool
) -> dict[str, Any]:
    """The dataset's provenance (sidecar ``source``) for policy rollouts."""
    return {
        "collector": "rlft.collect (policy rollouts)",
        "mode": "policy",
        "policy": str(cfg.policy),
        "policy_class": type(policy).__name__,
        "deterministic": cfg.deterministic,
        "seed": cfg.seed,
        "num_attempts": len(attempted),
        "only_success": not keep_failures,
        "success_rate": sum(attempts[i] for i in attempted) / len(attempted),
        "max_episode_steps": cfg.max_episode_steps,
        "reward": "the task env's reward",
    }


def _check_policy_cfg(cfg: CollectConfig) -> None:
    """Refuse collect settings that mode 'policy' does not support (no policy file, action noise)."""
    if cfg.mode != "policy":
        raise ConfigError(f"collect.policy: set only with mode 'policy' (mode is {cfg.mode!r})")
    if not cfg.policy:
        raise ConfigError("collect.policy: mode 'policy' needs the saved policy file to roll out (--policy PATH)")
    if cfg.action_noise:
        raise ConfigError(
            "collect.action_noise: mode 'policy' adds no action noise (use deterministic false to "
            "sample from the policy)"
        )


def _load_checked_policy(cfg: CollectConfig) -> tuple[Policy, dict[str, Any], int, dict[str, Any]]:
    """Load the policy and check it fits the env; return (policy, its extra metadata, obs_horizon, env_info)."""
    from rlft.envs import env_info, make_env
    from rlft.errors import CheckpointError
    from rlft.policies.base import load_policy, policy_extra

    policy = load_policy(cfg.policy)
    extra = policy_extra(cfg.policy)
    if extra.get("env_id") not in (None, cfg.env_id):
        raise ConfigError(f"collect.env_id: {cfg.env_id!r}, but {cfg.policy} was trained on {extra['env_id']!r}")
    obs_horizon = int(extra.get("obs_horizon", 1))
    probe = make_env(
        cfg.env_id,
        obs_horizon=obs_horizon,
        **({} if cfg.max_episode_steps is None else {"max_episode_steps": cfg.max_episode_steps}),
    )
    try:
        info = env_info(probe)
    finally:
        probe.close()
    if info["obs_dim"] != policy.obs_dim or info["action_dim"] != policy.action_dim:
        raise CheckpointError(
            f"{cfg.policy}: policy has obs_dim {policy.obs_dim}, action_dim {policy.action_dim}; "
            f"{cfg.env_id} (obs_horizon {obs_horizon}) has {info['obs_dim']}, {info['action_dim']}"
        )
    return policy, extra, obs_horizon, info


def _rollout_rounds(
    cfg: CollectConfig,
    policy: Policy,
    gamma: float,
    obs_horizon: int,
    n_workers: int,
    max_attempts: int,
    keep_failures: bool,
    console: Console,
) -> tuple[dict[int, tuple[int, Episode]], dict[int, bool], dict[int, int]]:
    """Roll out attempts in rounds until enough are kept; return (kept: index -> (seed, episode), index -> success,
    index -> episode length in env steps)."""
    from rlft.rollout import rollout_episodes

    kept: dict[int, tuple[int, Episode]] = {}
    attempts: dict[int, bool] = {}
    lengths: dict[int, int] = {}
    with console.status(f"collect rollouts of {cfg.policy}") as status:
        while len(kept) < cfg.num_episodes and len(attempts) < max_attempts:
            start = len(attempts)  # a round asks for what is missing, at least 4 per worker
            indices = range(start, min(max_attempts, start + max(cfg.num_episodes - len(kept), 4 * n_workers)))
            seed_of = {episode_seed(cfg.seed, i)[0]: i for i in indices}
            for res, ep in rollout_episodes(
                policy,
                cfg.env_id,
                list(seed_of),
                gamma,
                obs_horizon,
                cfg.max_episode_steps,
                cfg.deterministic,
                n_workers,
            ):
                i = seed_of[res.seed]
                attempts[i], lengths[i] = res.success_once, res.length
                if keep_failures or res.success_once:
                    kept[i] = (res.seed, ep)
            status.update(
                f"collect rollouts: {min(len(kept), cfg.num_episodes)}/{cfg.num_episodes} kept, success "
                f"{sum(attempts.values())}/{len(attempts)} attempts"
            )
    return kept, attempts, lengths
