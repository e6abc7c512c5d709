"""Flow-matching policy over action chunks (rectified-flow / conditional flow matching).

Convention (pinned here): t = 0 is noise ``x0 ~ N(0, I)``, t = 1 is the (normalised) action chunk
``x1``; the path is ``x_t = (1 - t) x0 + t x1`` and the regression target of the velocity net is ``x1 - x0``
(see ``flow_matching_target``).

Sampling integrates ``dx/dt = v(x, t, obs)`` with ``flow_steps`` Euler steps from t = 0 to 1 and clamps to [-1, 1].
The start point is explicit: ``noise`` if given (shape [B, H, A]; DSRL's latent action), else zeros when
``deterministic=True`` (the mode of the noise prior, used by evaluation), else a fresh standard normal draw.

Velocity networks (``velocity_net``):

* ``'mlp'``: MLP over ``[obs, flatten(x_t), sinusoidal(t)]`` -> H*A (GELU, optional LayerNorm);
* ``'unet'``: ``rlft.nets.unet1d.TemporalUNet1D`` over the chunk's time axis, FiLM-conditioned on
  ``[time embedding, obs]``.
"""

from __future__ import annotations

import torch
from torch import nn

from rlft.errors import ConfigError
from rlft.nets.mlp import MLP
from rlft.nets.unet1d import SinusoidalTimeEmbedding, TemporalUNet1D
from rlft.policies.base import Policy, register_policy
from rlft.policies.gaussian import masked_sum, valid_dim_count, weighted_batch_mean


# ----------------------------------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------------------------------
def flow_matching_target(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Point on the straight path and its velocity.

    ``x0`` noise [B, H, A], ``x1`` data [B, H, A], ``t`` [B] in [0, 1]:

        x_t      = (1 - t) * x0 + t * x1
        v_target = d x_t / dt = x1 - x0

    Returns ``(x_t, v_target)``.
    """
    tb = t.reshape(-1, *([1] * (x1.ndim - 1))).to(x1)
    return (1.0 - tb) * x0 + tb * x1, x1 - x0


def masked_flow_loss(
    v_pred: torch.Tensor, v_target: torch.Tensor, valid_mask: torch.Tensor | None, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted masked MSE of the velocity.

    Per sample ``l_b = sum_{h valid, a} (v_pred - v_target)[b, h, a]^2 / (A * #valid steps of b)`` (padded steps
    contribute nothing); the loss is ``mean_b w_b * l_b`` (plain mean without weights). Returns ``(loss, l [B])``.
    """
    sq = (v_pred - v_target).pow(2)
    per_sample = masked_sum(sq, valid_mask) / valid_dim_count(valid_mask, sq.shape).to(sq)
    return weighted_batch_mean(per_sample, weights), per_sample


# ----------------------------------------------------------------------------------------------------------------
class _MLPVelocity(nn.Module):
    def __init__(self, obs_dim: int, flat_dim: int, hidden_dims, layernorm: bool, time_embed_dim: int):
        super().__init__()
        self.time_embed = SinusoidalTimeEmbedding(time_embed_dim)
        self.net = MLP(obs_dim + flat_dim + time_embed_dim, tuple(hidden_dims), flat_dim, layernorm, act=nn.GELU)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, obs_n: torch.Tensor) -> torch.Tensor:
        B = x_t.shape[0]
        h = torch.cat([obs_n, x_t.reshape(B, -1), self.time_embed(t)], dim=-1)
        return self.net(h).reshape(x_t.shape)


class _UNetVelocity(nn.Module):
    def __init__(self, obs_dim, action_dim, dims, kernel_size, time_embed_dim, n_groups):
        super().__init__()
        self.unet = TemporalUNet1D(action_dim, obs_dim, tuple(dims), kernel_size, time_embed_dim, n_groups)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, obs_n: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, obs_n)


@register_policy
class FlowPolicy(Policy):
    """Flow-matching actor; see the module docstring."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        velocity_net: str = "mlp",
        hidden_dims: tuple[int, ...] = (256, 256, 256),
        layernorm: bool = True,
        flow_steps: int = 10,
        unet_dims: tuple[int, ...] = (64, 128, 256),
        unet_kernel_size: int = 5,
        time_embed_dim: int = 64,
        unet_n_groups: int = 8,
    ):
        hidden_dims = [int(h) for h in hidden_dims]
        unet_dims = [int(d) for d in unet_dims]
        if velocity_net not in ("mlp", "unet"):
            raise ConfigError(f"policy.velocity_net: unknown velocity net {velocity_net!r}; use 'mlp' or 'unet'")
        if flow_steps < 1:
            raise ConfigError(f"policy.flow_steps must be >= 1, got {flow_steps}")
        if time_embed_dim < 2:
            raise ConfigError(f"policy.time_embed_dim must be >= 2, got {time_embed_dim}")
        if velocity_net == "unet":
            if not unet_dims:
                raise ConfigError("policy.unet_dims must list at least one width")
            if unet_kernel_size < 1 or unet_kernel_size % 2 == 0:
                raise ConfigError(f"policy.unet_kernel_size must be odd, got {unet_kernel_size}")
            if any(d % unet_n_groups for d in unet_dims):
                raise ConfigError(
                    f"policy.unet_dims {unet_dims}: every width must be divisible by the GroupNorm groups ({unet_n_groups})"
                )
        super().__init__(
            obs_dim,
            action_dim,
            act_horizon,
            velocity_net=velocity_net,
            hidden_dims=hidden_dims,
            layernorm=layernorm,
            flow_steps=flow_steps,
            unet_dims=unet_dims,
            unet_kernel_size=unet_kernel_size,
            time_embed_dim=time_embed_dim,
            unet_n_groups=unet_n_groups,
        )
        self.flow_steps = int(flow_steps)
        self.velocity_net_kind = velocity_net
        if velocity_net == "mlp":
            self.net = _MLPVelocity(obs_dim, act_horizon * action_dim, hidden_dims, layernorm, time_embed_dim)
        else:
            self.net = _UNetVelocity(obs_dim, action_dim, unet_dims, unet_kernel_size, time_embed_dim, unet_n_groups)

    @property
    def noise_shape(self) -> tuple[int, int]:
        """Shape of one chunk's start noise x0: (H, A)."""
        return (self.act_horizon, self.action_dim)

    def velocity(self, obs_n: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """v(x_t, t | obs) [B, H, A]; ``t`` a float or a tensor of shape [B] / [B, 1] / [] in [0, 1]."""
        B = x_t.shape[0]
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        t = t.expand(B) if t.numel() == 1 else t.reshape(B)
        return self.net(x_t, t, obs_n)

    def sample(
        self, obs_n: torch.Tensor, noise: torch.Tensor | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        """Euler-integrate ``flow_steps`` steps from x0 (``noise`` > zeros if deterministic > randn); clamp to [-1, 1]."""
        B = obs_n.shape[0]
        shape = (B, self.act_horizon, self.action_dim)
        if noise is not None:
            x = noise.reshape(shape).to(obs_n)
        elif deterministic:
            x = torch.zeros(shape, dtype=obs_n.dtype, device=obs_n.device)
        else:
            x = torch.randn(shape, dtype=obs_n.dtype, device=obs_n.device)
        return self.integrate(obs_n, x).clamp(-1.0, 1.0)

    def integrate(self, obs_n: torch.Tensor, x0: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Unclamped Euler solution x(1) of dx/dt = v(x, t | obs) from x(0) = x0, t_k = k / steps (differentiable)."""
        n = self.flow_steps if steps is None else int(steps)
        dt = 1.0 / n
        x = x0
        for k in range(n):
            x = x + dt * self.velocity(obs_n, x, k * dt)
        return x

    def bc_loss(
        self,
        obs_n: torch.Tensor,
        action_n: torch.Tensor,
        valid_mask: torch.Tensor | None,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching loss with t ~ U(0, 1), x0 ~ N(0, I) (``masked_flow_loss``; padded steps excluded).

        info: ``bc_loss`` (unweighted masked velocity MSE), ``flow_loss`` (the weighted loss that is optimised).
        """
        B = obs_n.shape[0]
        x0 = torch.randn_like(action_n)
        t = torch.rand(B, dtype=action_n.dtype, device=action_n.device)
        x_t, v_target = flow_matching_target(x0, action_n, t)
        loss, per_sample = masked_flow_loss(self.velocity(obs_n, x_t, t), v_target, valid_mask, weights)
        return loss, {"bc_loss": float(per_sample.mean().detach()), "flow_loss": float(loss.detach())}
