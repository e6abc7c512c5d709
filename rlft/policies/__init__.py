"""Deployable actors over action chunks; see ``rlft.policies.base``."""

from __future__ import annotations

from rlft.policies.base import POLICY_CLASSES, Policy, load_policy, register_policy


def build_policy(cfg, obs_dim: int, action_dim: int, act_horizon: int) -> Policy:
    """Build the policy described by a ``PolicyConfig``."""
    from rlft.errors import ConfigError
    from rlft.policies.flow import FlowPolicy
    from rlft.policies.gaussian import GaussianPolicy

    if cfg.kind == "gaussian":
        return GaussianPolicy(
            obs_dim, action_dim, act_horizon, hidden_dims=tuple(cfg.hidden_dims), layernorm=cfg.layernorm,
            log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max, atanh_eps=cfg.atanh_eps,
        )
    if cfg.kind == "flow":
        return FlowPolicy(
            obs_dim, action_dim, act_horizon, velocity_net=cfg.velocity_net, hidden_dims=tuple(cfg.hidden_dims),
            layernorm=cfg.layernorm, flow_steps=cfg.flow_steps, unet_dims=tuple(cfg.unet_dims),
            unet_kernel_size=cfg.unet_kernel_size, time_embed_dim=cfg.time_embed_dim,
        )
    raise ConfigError(f"policy.kind: unknown policy kind {cfg.kind!r}; use 'gaussian' or 'flow'")


from rlft.policies import flow as _flow  # noqa: E402,F401  (register classes)
from rlft.policies import gaussian as _gaussian  # noqa: E402,F401
from rlft.policies import onestep as _onestep  # noqa: E402,F401  (FQL's one-step actor)
from rlft.policies import best_of_n as _best_of_n  # noqa: E402,F401  (QC/DQC's best-of-N actor)

__all__ = ["POLICY_CLASSES", "Policy", "build_policy", "load_policy", "register_policy"]
