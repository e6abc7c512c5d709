"""Deployable actors over action chunks; see ``rlft.policies.base``.

Policy kinds (``PolicyConfig.kind``) and their classes: 'gaussian' ``GaussianPolicy``, 'flow' ``FlowPolicy``,
'shortcut' ``ShortcutFlowPolicy``, 'consistency' ``ConsistencyFlowPolicy``, 'diffusion' ``DiffusionPolicy``.

Every generative kind uses one time convention, t = 0 noise ``x0 ~ N(0, I)`` (the explicit ``noise`` argument of
``sample``/``act``; zeros when deterministic), t = 1 the normalised action chunk; each module pins its mapping:

* flow:        ``x_t = (1 - t) x0 + t x1``, velocity target ``x1 - x0``, Euler from t = 0 to 1;
* shortcut:    the same path; ``s(x_t, t, d)`` is a velocity for a step of size d (d = 0: the flow velocity), the
               sampler takes ``shortcut_steps`` steps of d = 1/shortcut_steps from t = 0;
* consistency: the same path; ``f(x_t, t) = x_t + (e - t) v(x_t, t)`` maps a point to its segment's end e, so the
               one-step action is ``f(x0, 0)`` (t = 0 -> 1);
* diffusion:   DDPM noise level k (of K) is flow time ``t_k = 1 - (k + 1) / K``: the start ``x_T`` (noisiest level)
               is t = 0 and the clean action (abar = 1) is t = 1; DDIM runs from t = 0 upwards.
"""

from __future__ import annotations

from rlft.policies.base import POLICY_CLASSES, Policy, load_policy, register_policy

#: policy kind -> class name (exact class: a ConsistencyFlowPolicy is a FlowPolicy subclass but kind 'consistency')
POLICY_KIND_CLASSES: dict[str, str] = {
    "gaussian": "GaussianPolicy",
    "flow": "FlowPolicy",
    "shortcut": "ShortcutFlowPolicy",
    "consistency": "ConsistencyFlowPolicy",
    "diffusion": "DiffusionPolicy",
}


def policy_kind(policy: Policy) -> str | None:
    """The ``PolicyConfig.kind`` of a policy instance (None for a class not listed in ``POLICY_KIND_CLASSES``)."""
    name = type(policy).__name__
    return next((k for k, c in POLICY_KIND_CLASSES.items() if c == name), None)


def build_policy(cfg, obs_dim: int, action_dim: int, act_horizon: int) -> Policy:
    """Build the policy described by a ``PolicyConfig``."""
    from rlft.errors import ConfigError
    from rlft.policies.consistency import ConsistencyFlowPolicy
    from rlft.policies.diffusion import DiffusionPolicy
    from rlft.policies.flow import FlowPolicy
    from rlft.policies.gaussian import GaussianPolicy
    from rlft.policies.shortcut import ShortcutFlowPolicy

    net = dict(
        velocity_net=cfg.velocity_net,
        hidden_dims=tuple(cfg.hidden_dims),
        layernorm=cfg.layernorm,
        unet_dims=tuple(cfg.unet_dims),
        unet_kernel_size=cfg.unet_kernel_size,
        time_embed_dim=cfg.time_embed_dim,
    )
    if cfg.kind == "gaussian":
        return GaussianPolicy(
            obs_dim,
            action_dim,
            act_horizon,
            hidden_dims=tuple(cfg.hidden_dims),
            layernorm=cfg.layernorm,
            log_std_min=cfg.log_std_min,
            log_std_max=cfg.log_std_max,
            atanh_eps=cfg.atanh_eps,
        )
    if cfg.kind == "flow":
        return FlowPolicy(obs_dim, action_dim, act_horizon, flow_steps=cfg.flow_steps, **net)
    if cfg.kind == "shortcut":
        return ShortcutFlowPolicy(
            obs_dim,
            action_dim,
            act_horizon,
            shortcut_steps=cfg.shortcut_steps,
            max_steps=cfg.shortcut_max_steps,
            bootstrap_frac=cfg.shortcut_bootstrap_frac,
            **net,
        )
    if cfg.kind == "consistency":
        return ConsistencyFlowPolicy(
            obs_dim,
            action_dim,
            act_horizon,
            flow_steps=cfg.consistency_steps,
            consistency_delta=cfg.consistency_delta,
            consistency_coef=cfg.consistency_coef,
            flow_coef=cfg.consistency_flow_coef,
            **net,
        )
    if cfg.kind == "diffusion":
        return DiffusionPolicy(
            obs_dim,
            action_dim,
            act_horizon,
            train_steps=cfg.diffusion_train_steps,
            inference_steps=cfg.diffusion_inference_steps,
            beta_schedule_kind=cfg.diffusion_beta_schedule,
            clip_sample=cfg.diffusion_clip_sample,
            **net,
        )
    raise ConfigError(f"policy.kind: unknown policy kind {cfg.kind!r}; use one of {sorted(POLICY_KIND_CLASSES)}")


from rlft.policies import best_of_n as _best_of_n  # noqa: E402,F401  (QC/DQC's best-of-N actor)
from rlft.policies import consistency as _consistency  # noqa: E402,F401  (register classes)
from rlft.policies import diffusion as _diffusion  # noqa: E402,F401
from rlft.policies import flow as _flow  # noqa: E402,F401
from rlft.policies import gaussian as _gaussian  # noqa: E402,F401
from rlft.policies import onestep as _onestep  # noqa: E402,F401  (FQL's one-step actor)
from rlft.policies import residual as _residual  # noqa: E402,F401  (residual RL's frozen base + per-step residual)
from rlft.policies import shortcut as _shortcut  # noqa: E402,F401
from rlft.policies import steered as _steered  # noqa: E402,F401  (DSRL's frozen base + latent actor)

__all__ = [
    "POLICY_CLASSES",
    "POLICY_KIND_CLASSES",
    "Policy",
    "build_policy",
    "load_policy",
    "policy_kind",
    "register_policy",
]
