"""``build_stage(cfg)``: everything one training stage is made of, built from its ``TrainConfig``.

In order: the env's dimensions (one probe env), the policies the stage starts from (a pretrained actor, a frozen base
policy, or a composite that brings both), the dataset, the action-space adapter (``rlft.train.adapters``: plain
chunks, DSRL's noise space or a per-step residual -- it owns everything that differs between them), the actor (the
pretrained one or a fresh one from the adapter), the chunk dataset in the actor's space and its normalisation
statistics, the algorithm, the deployable policy and the online replay buffer. The runner (``rlft.train.runner``)
only loops over it; nothing here or there knows an algorithm by name.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch

from rlft.algos import Algorithm, get_algorithm
from rlft.data.dataset import ChunkDataset
from rlft.data.episodes import Episode, plan_confidence_weights
from rlft.data.replay import ReplayBuffer
from rlft.envs import env_info, make_env
from rlft.envs.datasets import load_dataset_for_env
from rlft.errors import CheckpointError, ConfigError
from rlft.policies import Policy, load_policy
from rlft.train.adapters import ChunkAdapter, input_dim, make_adapter, split_composite
from rlft.train.config import TrainConfig


@dataclasses.dataclass
class Stage:
    """The parts of a training stage (see the module docstring)."""

    info: dict[str, Any]
    """``rlft.envs.env_info`` of the run's env (dims, action box, time limit)."""
    env_kwargs: dict[str, Any]
    """Constructor arguments of the training env (time limit, reward mode)."""
    adapter: ChunkAdapter
    """How the trained actor meets the env; composes the deployable policy."""
    base: Policy | None
    """The frozen base policy the actor acts through (DSRL, residual RL), or None."""
    algo: Algorithm
    """The algorithm; ``algo.policy`` is the actor it trains."""
    policy: Policy
    """The deployable policy: the actor, or the composite of the frozen base policy and the actor."""
    dataset: ChunkDataset | None
    """The offline data as chunks in the actor's space (None without a dataset)."""
    replay: ReplayBuffer | None
    """The online replay buffer (None offline)."""
    reward_range: list[float]
    """[min, max] of the dataset's per-step rewards ([] without data): with gamma it bounds every value estimate."""


def check_stage_config(cfg: TrainConfig, algo_cls: type[Algorithm]) -> None:
    """Refuse combinations of settings that cannot run, before anything is built."""
    ac, online = cfg.algo_cfg, cfg.mode == "online"
    if not online and not cfg.dataset:
        raise ConfigError("dataset: an offline stage needs a dataset file")
    if online and ac.rollout_steps > 0 and (ac.offline_ratio > 0 or ac.rollout_steps > cfg.replay_capacity):
        raise ConfigError(
            f"algo_cfg.rollout_steps: an on-policy rollout of {ac.rollout_steps} macro-steps needs "
            f"offline_ratio 0 and replay_capacity >= rollout_steps ({cfg.replay_capacity})"
        )
    if online and ac.offline_ratio > 0 and not cfg.dataset:
        raise ConfigError(f"dataset: algo_cfg.offline_ratio={ac.offline_ratio} needs an offline dataset file")
    if online and ac.data_horizon(cfg.env.act_horizon) != cfg.env.act_horizon:
        raise ConfigError(
            f"mode: {cfg.algo} trains on {ac.data_horizon(cfg.env.act_horizon)}-step chunks but online "
            f"replay holds the executed {cfg.env.act_horizon}-step chunks (env.act_horizon); run it "
            "in offline mode"
        )
    if algo_cls.needs_pretrained_critic and not cfg.init_critic:
        raise ConfigError(f"init_critic: {cfg.algo} needs pretrained critics (a previous stage's checkpoints/state.pt)")


def probe_env(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(env_info, env constructor kwargs)`` of the stage's env, from one short-lived probe env."""
    env_kw: dict[str, Any] = {}
    if cfg.env.max_episode_steps is not None:
        env_kw["max_episode_steps"] = cfg.env.max_episode_steps
    if cfg.env.reward_mode is not None:
        env_kw["reward_mode"] = cfg.env.reward_mode
    probe = make_env(cfg.env.env_id, obs_horizon=cfg.env.obs_horizon, **env_kw)
    try:
        return env_info(probe), env_kw
    finally:
        probe.close()


def check_policy_matches(policy: Policy, info: dict[str, Any], act_horizon: int, source: str) -> None:
    got = (input_dim(policy), policy.action_dim, policy.act_horizon)
    want = (info["obs_dim"], info["action_dim"], act_horizon)
    if got != want:
        raise CheckpointError(
            f"{source}: policy has (obs_dim, action_dim, act_horizon) = {got} but the env/config needs {want}"
        )


def load_start_policies(
    cfg: TrainConfig, info: dict[str, Any], device: torch.device
) -> tuple[Policy | None, Policy | None, dict]:
    """``(frozen base policy or None, pretrained actor or None, composite settings)`` from ``init_policy`` (a plain
    policy, or a composite that brings its base) and ``base_policy``."""
    base, actor, settings = None, None, {}
    H = cfg.env.act_horizon
    if cfg.init_policy:
        loaded = load_policy(cfg.init_policy)
        check_policy_matches(loaded, info, H, cfg.init_policy)
        base, actor, saved_mode, settings = split_composite(loaded)
        if saved_mode is not None and saved_mode != cfg.base_mode:
            raise ConfigError(
                f"base_mode: {cfg.init_policy} is a {saved_mode} composite; set base_mode {saved_mode} to continue it"
            )
    if cfg.base_policy:
        if actor is not None and base is None:
            raise ConfigError(
                "init_policy: with base_policy set, init_policy must be a composite of the same "
                "kind (its actor is continued) or unset"
            )
        base = load_policy(cfg.base_policy, map_location=device)
        check_policy_matches(base, info, H, cfg.base_policy)
    if base is not None:
        base.to(device).requires_grad_(False).eval()
    return base, actor, settings


def check_cameras(path: str | None, episode: Episode, info: dict[str, Any]) -> None:
    """The dataset's cameras are the env's, with the same frame size; else one ConfigError naming the file and the
    camera (a state-only dataset for a camera env, or the other way round, included)."""
    have = {c: tuple(v.shape[1:]) for c, v in (episode.images or {}).items()}
    want = {c: tuple(s[1:]) for c, s in (info.get("image_shapes") or {}).items()}
    for cam in sorted(set(have) | set(want)):
        if have.get(cam) != want.get(cam):
            got = f"frames {have[cam]}" if cam in have else "no such camera"
            need = f"frames {want[cam]}" if cam in want else "no such camera"
            raise ConfigError(
                f"dataset {path}: camera {cam!r}: the file has {got} (obs/sensor_data/{cam}/rgb), env "
                f"{info['env_id']} has {need}"
            )


def build_dataset(
    cfg: TrainConfig,
    episodes: list[Episode],
    info: dict[str, Any],
    adapter: ChunkAdapter,
    stats_from: Policy | None,
    actor: Policy,
    device: torch.device,
) -> ChunkDataset:
    """The offline episodes as chunks in the actor's space, normalised with ``stats_from``'s statistics (a
    pretrained or base policy's), or -- from scratch -- with the data's own, which the actor then adopts."""
    o, a = episodes[0].obs.shape[1] * cfg.env.obs_horizon, episodes[0].actions.shape[1]
    if (o, a) != (info["obs_dim"], info["action_dim"]):
        raise ConfigError(
            f"dataset {cfg.dataset}: obs/action dims ({o}, {a}) do not match env "
            f"{cfg.env.env_id} ({info['obs_dim']}, {info['action_dim']})"
        )
    check_cameras(cfg.dataset, episodes[0], info)
    low, high = info["action_low"], info["action_high"]
    data_h, obs_h = cfg.algo_cfg.data_horizon(cfg.env.act_horizon), cfg.env.obs_horizon
    if adapter.data_obs_horizon is not None:  # data in the actor's own space (residual: delta, base action)
        episodes = adapter.actor_episodes(episodes, cfg.env.obs_horizon)
        data_h, obs_h, stats_from, low, high = adapter.act_horizon, adapter.data_obs_horizon, actor, -1.0, 1.0
    ds = ChunkDataset(
        episodes,
        planned_targets=cfg.chunk_targets == "planned",
        act_horizon=data_h,
        gamma=cfg.env.gamma,
        obs_horizon=obs_h,
        normalizer=stats_from.normalizer if stats_from is not None else None,
        device=device,
        act_low=low,
        act_high=high,
    )
    if stats_from is None:
        actor.normalizer.load_state_dict(ds.normalizer.state_dict())
        ds.normalizer = actor.normalizer
    return ds


def build_replay(
    cfg: TrainConfig, adapter: ChunkAdapter, algo: Algorithm, info: dict[str, Any], device: torch.device
) -> ReplayBuffer:
    """The online replay: raw observations (and camera frames) in, normalised with the actor's statistics out."""
    return ReplayBuffer(
        cfg.replay_capacity,
        adapter.obs_dim,
        adapter.act_horizon,
        adapter.action_dim,
        algo.policy.normalizer,
        device=device,
        image_shapes=info.get("image_shapes"),
        **adapter.replay_fields(),
        n_step=cfg.n_step,
    )


def build_stage(cfg: TrainConfig, device: torch.device) -> Stage:
    """Build the stage ``cfg`` describes on ``device`` (see the module docstring); ``ConfigError`` /
    ``CheckpointError`` / ``DatasetError`` name the setting or file at fault."""
    algo_cls = get_algorithm(cfg.algo)
    check_stage_config(cfg, algo_cls)
    info, env_kw = probe_env(cfg)
    base, actor, settings = load_start_policies(cfg, info, device)
    if algo_cls.uses_base_policy and base is None:
        raise ConfigError(
            f"base_policy: {cfg.algo} steers a frozen base policy; set base_policy (or init_policy to a steered policy)"
        )

    if cfg.data_weighting != "none" and not algo_cls.imitation_only:
        raise ConfigError(f"data_weighting: {cfg.algo} does not weigh rows (BC does); set data_weighting: none")
    if cfg.chunk_targets != "executed" and not algo_cls.imitation_only:
        raise ConfigError(f"chunk_targets: {cfg.algo} learns from rewards of executed chunks; only BC imitates plans")

    @functools.cache
    def load_episodes() -> list[Episode] | None:  # read once, when first needed (after the checks that need none)
        if not cfg.dataset:
            return None
        episodes = load_dataset_for_env(cfg.dataset, info, cfg.clip_dataset_actions)[0]
        if cfg.data_weighting == "plan_confidence":
            episodes = plan_confidence_weights(episodes, cfg.data_weighting_temperature, cfg.dataset)
        return episodes

    adapter = make_adapter(cfg, base, info, load_episodes, settings)
    if (
        base is not None
        and not adapter.offline_data
        and (cfg.mode == "offline" or cfg.algo_cfg.offline_ratio > 0)
        and not algo_cls.uses_base_policy
    ):
        raise ConfigError(
            f"base_policy: the dataset holds env actions, not latent noise, so {cfg.algo} cannot "
            f"learn from it in the noise space; run it online with offline_ratio 0"
        )
    episodes = load_episodes()
    if actor is None:
        actor = adapter.fresh_actor(cfg.algo_cfg.policy)
    elif base is not None:
        adapter.check_actor(actor, f"{cfg.init_policy} (actor)")
    stats_from = base if base is not None else (actor if cfg.init_policy else None)  # whose statistics data use
    dataset = None
    if episodes is not None:
        dataset = build_dataset(cfg, episodes, info, adapter, stats_from, actor, device)
    elif stats_from is None:
        actor.normalizer.set_stats(
            np.zeros(info["obs_dim"]), np.ones(info["obs_dim"]), info["action_low"], info["action_high"]
        )
    algo_kw = {"base_policy": base} if algo_cls.uses_base_policy else {}
    net_obs_dim = actor.obs_dim if actor.encoder is not None else adapter.obs_dim  # with cameras: state + features
    algo = algo_cls(
        cfg.algo_cfg, net_obs_dim, adapter.action_dim, adapter.act_horizon, policy=actor, device=device, **algo_kw
    )
    replay = build_replay(cfg, adapter, algo, info, device) if cfg.mode == "online" else None
    rewards = np.concatenate([np.asarray(e.rewards, np.float64).reshape(-1) for e in episodes]) if episodes else []
    reward_range = [float(np.min(rewards)), float(np.max(rewards))] if len(rewards) else []
    return Stage(info, env_kw, adapter, base, algo, adapter.compose(algo.policy), dataset, replay, reward_range)
