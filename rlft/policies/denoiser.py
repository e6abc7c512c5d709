"""The conditional chunk network shared by the shortcut and diffusion policies: ``net(x, t, cond) -> [B, H, A]``.

``x`` is a (noisy) chunk [B, H, A], ``t`` a time in [0, 1] (flow convention: 0 = noise, 1 = action) and ``cond`` the
conditioning vector (the normalised observation, plus whatever else a policy conditions on, e.g. the shortcut step
size embedding). The output has the chunk's shape: a velocity (flow, shortcut) or a noise prediction (diffusion).

The two architectures are the flow policy's (``rlft.policies.flow``): ``'mlp'`` (MLP over ``[cond, flatten(x),
sinusoidal(t)]``) and ``'unet'`` (``rlft.nets.unet1d.TemporalUNet1D``, FiLM-conditioned on ``[time embedding,
cond]``). This module only adds the argument checks, with errors naming the ``policy.*`` config field.
"""

from __future__ import annotations

from torch import nn

from rlft.errors import ConfigError
from rlft.policies.flow import _MLPVelocity, _UNetVelocity


def build_denoiser_net(
    cond_dim: int,
    action_dim: int,
    act_horizon: int,
    velocity_net: str,
    hidden_dims,
    layernorm: bool,
    unet_dims,
    unet_kernel_size: int,
    time_embed_dim: int,
    unet_n_groups: int,
) -> nn.Module:
    """Validate the architecture arguments and build the network (``forward(x, t, cond)``)."""
    if velocity_net not in ("mlp", "unet"):
        raise ConfigError(f"policy.velocity_net: unknown network {velocity_net!r}; use 'mlp' or 'unet'")
    if time_embed_dim < 2:
        raise ConfigError(f"policy.time_embed_dim must be >= 2, got {time_embed_dim}")
    if velocity_net == "mlp":
        return _MLPVelocity(cond_dim, act_horizon * action_dim, list(hidden_dims), layernorm, time_embed_dim)
    if not unet_dims:
        raise ConfigError("policy.unet_dims must list at least one width")
    if unet_kernel_size < 1 or unet_kernel_size % 2 == 0:
        raise ConfigError(f"policy.unet_kernel_size must be odd, got {unet_kernel_size}")
    if any(d % unet_n_groups for d in unet_dims):
        raise ConfigError(
            f"policy.unet_dims {list(unet_dims)}: every width must be divisible by the GroupNorm groups ({unet_n_groups})"
        )
    return _UNetVelocity(cond_dim, action_dim, list(unet_dims), unet_kernel_size, time_embed_dim, unet_n_groups)
