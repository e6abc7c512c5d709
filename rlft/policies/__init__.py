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


def _net(cfg) -> dict:
    """The network-size arguments every generative kind takes."""
    return dict(
        velocity_net=cfg.velocity_net,
        hidden_dims=tuple(cfg.hidden_dims),
        layernorm=cfg.layernorm,
        unet_dims=tuple(cfg.unet_dims),
        unet_kernel_size=cfg.unet_kernel_size,
        time_embed_dim=cfg.time_embed_dim,
    )


def _gaussian_policy(cfg, *dims) -> Policy:
    from rlft.policies.gaussian import GaussianPolicy

    g = cfg.gaussian
    return GaussianPolicy(
        *dims,
        hidden_dims=tuple(cfg.hidden_dims),
        layernorm=cfg.layernorm,
        log_std_min=g.log_std_min,
        log_std_max=g.log_std_max,
        atanh_eps=g.atanh_eps,
    )


def _flow_policy(cfg, *dims) -> Policy:
    from rlft.policies.flow import FlowPolicy

    return FlowPolicy(*dims, flow_steps=cfg.flow_steps, **_net(cfg))


def _shortcut_policy(cfg, *dims) -> Policy:
    from rlft.policies.shortcut import ShortcutFlowPolicy

    o = cfg.shortcut
    return ShortcutFlowPolicy(
        *dims, shortcut_steps=o.steps, max_steps=o.max_steps, bootstrap_frac=o.bootstrap_frac, **_net(cfg)
    )


def _consistency_policy(cfg, *dims) -> Policy:
    from rlft.policies.consistency import ConsistencyFlowPolicy

    o = cfg.consistency
    return ConsistencyFlowPolicy(
        *dims,
        flow_steps=o.steps,
        consistency_delta=o.delta,
        consistency_coef=o.coef,
        flow_coef=o.flow_coef,
        **_net(cfg),
    )


def _diffusion_policy(cfg, *dims) -> Policy:
    from rlft.policies.diffusion import DiffusionPolicy

    o = cfg.diffusion
    return DiffusionPolicy(
        *dims,
        train_steps=o.train_steps,
        inference_steps=o.inference_steps,
        beta_schedule_kind=o.beta_schedule,
        clip_sample=o.clip_sample,
        **_net(cfg),
    )


#: PolicyConfig.kind -> builder(cfg, obs_dim, action_dim, act_horizon)
_BUILDERS = {
    "gaussian": _gaussian_policy,
    "flow": _flow_policy,
    "shortcut": _shortcut_policy,
    "consistency": _consistency_policy,
    "diffusion": _diffusion_policy,
}


def build_policy(cfg, obs_dim: int, action_dim: int, act_horizon: int) -> Policy:
    """Build the policy described by a ``PolicyConfig``."""
    from rlft.errors import ConfigError

    if cfg.kind not in _BUILDERS:
        raise ConfigError(f"policy.kind: unknown policy kind {cfg.kind!r}; use one of {sorted(POLICY_KIND_CLASSES)}")
    return _BUILDERS[cfg.kind](cfg, obs_dim, action_dim, act_horizon)


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
