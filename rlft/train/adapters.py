"""Action-space adapters: how the actor an algorithm trains meets the environment.

A stage trains one actor. Usually that actor *is* the policy, acting in env-action chunks. With a frozen base policy
the actor acts in another space, and everything that differs is owned by one adapter, so the runner holds one and
knows none of them by name:

* ``ChunkAdapter``: the actor outputs env chunks [H, A], executed open loop (``ChunkExecutor``);
* ``NoiseAdapter`` (DSRL, Wagenmaker et al., 2025): the actor outputs the base flow policy's start noise [H, A],
  decoded by the frozen base policy (``rlft.envs.noise_action``); replay also keeps the decoded env chunk;
* ``ResidualAdapter`` (ResiP, Ankile et al., 2024): the actor outputs a per-step correction of the base policy's
  action, seeing ``concat(o_t, a^base_t)`` (``rlft.envs.residual``); offline rows are relabelled into that space.

Each adapter gives the actor's shape (``obs_dim``, ``act_horizon``, ``action_dim``), builds a fresh actor with the
right statistics, wraps the online env, turns offline episodes into the actor's data, composes the deployable policy
and names the replay buffer's extra fields.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from rlft.data.episodes import Episode
from rlft.errors import ConfigError
from rlft.policies import Policy, build_policy


class ChunkAdapter:
    """The actor is the policy: env chunks of ``act_horizon`` steps."""

    #: whether offline data (env actions) can be expressed in the actor's action space
    offline_data: bool = True
    #: the observation history the actor's data is sampled with (None = the env's)
    data_obs_horizon: int | None = None

    def __init__(self, obs_dim: int, action_dim: int, act_horizon: int, image_shapes: dict | None = None):
        self.obs_dim, self.action_dim, self.act_horizon = obs_dim, action_dim, act_horizon
        self.base: Policy | None = None
        #: {camera: (To, H, W, C)} of an env with cameras; the actor then gets an image encoder
        self.image_shapes = image_shapes or {}

    def fresh_actor(self, policy_cfg) -> Policy:
        if not self.image_shapes:
            return build_policy(policy_cfg, self.obs_dim, self.action_dim, self.act_horizon)
        from rlft.nets.encoders import EncoderSpec

        e = policy_cfg.encoder
        spec = EncoderSpec(self.image_shapes, self.obs_dim, e.kind, e.feature_dim, e.shift_pad)
        actor = build_policy(policy_cfg, self.obs_dim + spec.out_dim, self.action_dim, self.act_horizon)
        return actor.attach_encoder(spec)

    def check_actor(self, actor: Policy, source: str) -> None:
        got = (input_dim(actor), actor.action_dim, actor.act_horizon)
        want = (self.obs_dim, self.action_dim, self.act_horizon)
        if got != want:
            raise ConfigError(
                f"{source}: the actor has (obs_dim, action_dim, act_horizon) = {got} but this stage "
                f"trains one with {want}"
            )

    def actor_episodes(self, episodes: list[Episode], obs_horizon: int) -> list[Episode]:
        return episodes

    def wrap_env(self, env, gamma: float):
        """``env`` (observation history) -> the env the actor acts on."""
        return _chunks(env, self.act_horizon, gamma)

    def compose(self, actor: Policy) -> Policy:
        return actor

    def replay_fields(self) -> dict:
        return {}

    def exec_chunk(self, info: dict):
        return None

    def exploring(self, chunk: torch.Tensor, env_step: int) -> torch.Tensor:
        """The actor's exploration chunk(s) [B, H, A] as executed and stored at env step ``env_step``."""
        return chunk


def input_dim(policy: Policy) -> int:
    """The raw observation dim a policy takes: its state part when it has an image encoder."""
    return policy.encoder.spec.state_dim if getattr(policy, "encoder", None) is not None else policy.obs_dim


def _chunks(env, H: int, gamma: float):
    from rlft.envs.wrappers import ChunkExecutor

    return ChunkExecutor(env, H, gamma)


class NoiseAdapter(ChunkAdapter):
    """DSRL: the actor outputs the frozen base policy's latent noise chunk, bounded to [-magnitude, magnitude]."""

    offline_data = False

    def __init__(self, base: Policy, magnitude: float):
        from rlft.envs.noise_action import noise_shape_of

        h, a = noise_shape_of(base)
        super().__init__(base.obs_dim, a, h)
        self.base, self.magnitude = base, float(magnitude)

    def fresh_actor(self, policy_cfg) -> Policy:
        from rlft.policies.steered import start_at_prior_mode

        actor = start_at_prior_mode(super().fresh_actor(policy_cfg))  # mean noise ~0: the base's own behaviour
        nz, m = self.base.normalizer, np.full(self.action_dim, self.magnitude)
        actor.normalizer.set_stats(nz.obs_mean.cpu().numpy(), nz.obs_std.cpu().numpy(), -m, m)
        return actor

    def check_actor(self, actor: Policy, source: str) -> None:
        super().check_actor(actor, source)
        if not np.allclose(actor.normalizer.act_high.cpu().numpy(), self.magnitude):
            raise ConfigError(
                f"action_magnitude: {self.magnitude} differs from the latent actor's noise bound "
                f"{actor.normalizer.act_high.tolist()} in {source}"
            )

    def wrap_env(self, env, gamma: float):
        from rlft.envs.noise_action import NoiseActionWrapper

        return NoiseActionWrapper(_chunks(env, self.base.act_horizon, gamma), self.base, self.magnitude)

    def compose(self, actor: Policy) -> Policy:
        from rlft.policies.steered import SteeredFlowPolicy

        return SteeredFlowPolicy.compose(self.base, actor)

    def replay_fields(self) -> dict:
        return {"exec_shape": self.base.chunk_shape, "exec_normalizer": self.base.normalizer}

    def exec_chunk(self, info: dict):
        return info["decoded_action"]


class ResidualAdapter(ChunkAdapter):
    """Residual RL: the actor outputs a per-step correction ``delta`` in [-1, 1]^A of the base policy's action,
    scaled by ``bound`` [A] (env units), from ``concat(o_t, a^base_t)``."""

    data_obs_horizon = 1  # the relabelled observations already hold the stacked history

    def __init__(self, base: Policy, bound, ramp_steps: int = 0):
        super().__init__(base.obs_dim + base.action_dim, base.action_dim, 1)
        self.base, self.bound, self.ramp_steps = base, np.asarray(bound, np.float32), int(ramp_steps)

    def exploring(self, chunk: torch.Tensor, env_step: int) -> torch.Tensor:
        """Progressive exploration (Policy Decorator, Yuan et al., 2024): before ``ramp_steps`` env steps, each
        row's residual acts with probability ``env_step / ramp_steps``; the other rows run the base action alone and
        are stored as ``delta = 0``, what was executed. Uses torch's global RNG (seeded by the run)."""
        if env_step >= self.ramp_steps:
            return chunk
        keep = torch.rand(chunk.shape[0]) < env_step / self.ramp_steps
        return torch.where(keep.view(-1, *([1] * (chunk.dim() - 1))).to(chunk.device), chunk, torch.zeros_like(chunk))

    def fresh_actor(self, policy_cfg) -> Policy:
        from rlft.policies.residual import zero_output

        actor = zero_output(super().fresh_actor(policy_cfg))  # delta = 0: the composite starts as the base policy
        nz = self.base.normalizer
        lo, hi = nz.act_low.cpu().numpy(), nz.act_high.cpu().numpy()
        actor.normalizer.set_stats(
            np.concatenate([nz.obs_mean.cpu().numpy(), (lo + hi) / 2]),
            np.concatenate([nz.obs_std.cpu().numpy(), (hi - lo) / 2]),
            -np.ones(self.action_dim),
            np.ones(self.action_dim),
        )
        return actor

    def actor_episodes(self, episodes: list[Episode], obs_horizon: int) -> list[Episode]:
        from rlft.envs.residual import residual_episodes

        return residual_episodes(episodes, self.base, self.bound, obs_horizon)

    def wrap_env(self, env, gamma: float):
        from rlft.envs.residual import ResidualActionWrapper

        return _chunks(ResidualActionWrapper(env, self.base, self.bound), 1, gamma)

    def compose(self, actor: Policy) -> Policy:
        from rlft.policies.residual import ResidualPolicy

        return ResidualPolicy.compose(self.base, actor, self.bound)


def make_adapter(
    cfg, base: Policy | None, info: dict, episodes: Callable[[], list[Episode] | None], settings: dict
) -> ChunkAdapter:
    """The adapter for a stage (``cfg`` a ``TrainConfig``; ``info`` the env's ``env_info``): no base policy ->
    chunks; with one, ``cfg.base_mode`` 'noise' (DSRL) or 'residual'. The residual's bound [A] is
    ``cfg.residual_scale`` x ``cfg.residual_dim_scale`` x ``cfg.residual_unit``
    (``rlft.envs.residual.residual_bound``; 'action_std' measures the dataset's episodes, ``episodes()`` reads them);
    a continued residual composite (``settings`` from ``split_composite``) must keep its bound."""
    if base is None:
        return ChunkAdapter(info["obs_dim"], info["action_dim"], cfg.env.act_horizon, info.get("image_shapes"))
    if info.get("image_shapes"):
        raise ConfigError(
            f"base_policy: {cfg.env.env_id} has cameras; steering (DSRL) and residual RL over a frozen policy take "
            "state observations only so far"
        )
    if cfg.base_mode == "noise":
        return NoiseAdapter(base, cfg.action_magnitude)
    if cfg.base_mode != "residual":
        raise ConfigError(f"base_mode: {cfg.base_mode!r} is not 'noise' or 'residual'")
    from rlft.envs.residual import residual_bound

    data = episodes()
    actions = None if data is None else np.concatenate([e.actions for e in data])
    bound = residual_bound(
        cfg.residual_scale, cfg.residual_unit, info["action_low"], info["action_high"], actions, cfg.residual_dim_scale
    )
    if "residual_bound" in settings and not np.allclose(settings["residual_bound"], bound, rtol=1e-4):
        raise ConfigError(
            f"residual_scale/residual_dim_scale/residual_unit: they give the bound {bound.tolist()}, but "
            f"{cfg.init_policy} was trained with {settings['residual_bound']}"
        )
    return ResidualAdapter(base, bound, cfg.residual_ramp_steps)


def split_composite(policy: Policy) -> tuple[Policy | None, Policy, str | None, dict]:
    """``(base, actor, base_mode, settings)`` of a composite a previous stage saved; ``(None, policy, None, {})`` for a
    plain policy. ``settings`` holds the composite's own parameters (the residual bound)."""
    from rlft.policies.residual import ResidualPolicy
    from rlft.policies.steered import SteeredFlowPolicy

    if isinstance(policy, SteeredFlowPolicy):
        return policy.base, policy.latent, "noise", {}
    if isinstance(policy, ResidualPolicy):
        return policy.base, policy.residual, "residual", {"residual_bound": policy.bound}
    return None, policy, None, {}
