"""Shortcut flow policy (Frans et al., 2024, "One Step Diffusion via Shortcut Models") over action chunks.

Convention (the flow policy's, ``rlft.policies.flow``): t = 0 is noise ``x0 ~ N(0, I)``, t = 1 is the normalised
action chunk ``x1``; ``x_t = (1 - t) x0 + t x1``. A shortcut model ``s(x_t, t, d | obs)`` is a velocity that also
knows the step size ``d`` it will be used with: one Euler step ``x_{t+d} = x_t + d * s(x_t, t, d)`` is meant to land
where the exact flow would. ``s(x_t, t, 0)`` is the ordinary flow-matching velocity.

Step sizes are the powers of two ``d = 2^-l``, encoded by their *level* ``l``: levels ``0 .. L-1`` are ``d = 1, 1/2,
..., 2/M`` and level ``L = log2(M)`` (``M = max_steps``) stands for the finest step ``d = 1/M``, which is identified
with ``d = 0`` (the flow velocity), as in the paper ("for the smallest d we query d = 0") and its reference code
(the flow-matching rows are trained at the finest level). The level enters the network through a learned
embedding, concatenated to the observation as the conditioning vector.

Training loss (``bc_loss``), on a batch of B chunks of which the first ``floor(bootstrap_frac * B)`` rows are
self-consistency ("bootstrap") rows and the rest flow-matching rows:

* flow rows:      ``|| s(x_t, t, level L) - (x1 - x0) ||^2``, t on the grid {0, 1/M, ..., (M-1)/M};
* bootstrap rows: ``|| s(x_t, t, level k) - sg[(s(x_t, t, d) + s(x'_{t+d}, t + d, d)) / 2] ||^2`` with
  ``2d = 2^-k`` (levels k = 0..L-1 cycled over the rows, so every level gets the same number of rows),
  ``d = 2^-(k+1)`` at level k + 1, ``x'_{t+d} = x_t + d * s(x_t, t, d)`` and t on the grid of the big step,
  {0, 2d, 4d, ..., 1 - 2d} (so t + 2d <= 1). The target uses the current weights under ``torch.no_grad``
  (stop-gradient; the reference code can use an EMA copy instead).

Each row's squared error is averaged over its valid chunk steps only (``masked_flow_loss``: padded steps never
enter), then rows are combined with the optional per-sample weights (``mean_b w_b l_b``).

Sampling (``sample``): ``steps`` Euler steps of size ``d = 1/steps`` (a power of two <= M; 1 = one-step generation)
from the start noise, at level log2(steps): ``noise`` if given (shape [B, H, A]), zeros if ``deterministic``, else
fresh N(0, I). The result is clamped to [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rlft.errors import ConfigError
from rlft.policies.base import Policy, register_policy
from rlft.policies.denoiser import build_denoiser_net
from rlft.policies.flow import flow_matching_target, masked_flow_loss


# ----------------------------------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------------------------------
def _log2_exact(n: int) -> int | None:
    """log2(n) if n is a positive power of two, else None."""
    return int(math.log2(n)) if n >= 1 and (n & (n - 1)) == 0 else None


def step_level(num_steps: int, max_steps: int) -> int:
    """Level of the step size d = 1/num_steps: ``log2(num_steps)`` (the finest level log2(max_steps) = the flow)."""
    lvl = _log2_exact(int(num_steps))
    if lvl is None or num_steps > max_steps:
        raise ConfigError(f"policy.shortcut.steps must be a power of two in [1, {max_steps}], got {num_steps}")
    return lvl


def bootstrap_levels(n: int, num_levels: int) -> torch.Tensor:
    """Big-step levels k of n bootstrap rows, cycling 0, 1, ..., num_levels-1, 0, ... ([n] long; 2d = 2^-k)."""
    return torch.arange(n) % num_levels


def bootstrap_times(levels: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Start times on the grid of the big step: ``t = floor(u * 2^k) / 2^k`` for ``u`` in [0, 1), so that
    t is in {0, 2d, ..., 1 - 2d} and t + 2d <= 1."""
    sections = torch.pow(2.0, levels.to(u.dtype))
    return torch.floor(u * sections) / sections


def shortcut_target(velocity_fn, x_t: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Self-consistency target of a step of size 2d made of two steps of size d:

        v1 = s(x_t, t, d);   x' = x_t + d * v1;   v2 = s(x', t + d, d);   target = (v1 + v2) / 2

    ``velocity_fn(x, t) -> velocity`` evaluates s at step size d (the caller binds d's level); ``x_t`` [B, H, A],
    ``t`` and ``d`` [B]. Then ``x_t + 2d * target = x'' `` (the two-step end point). Call under ``torch.no_grad``.
    """
    db = d.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t)
    v1 = velocity_fn(x_t, t)
    v2 = velocity_fn(x_t + db * v1, t + d)
    return 0.5 * (v1 + v2)


# ----------------------------------------------------------------------------------------------------------------
@register_policy
class ShortcutFlowPolicy(Policy):
    """Shortcut-model actor; see the module docstring."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        velocity_net: str = "mlp",
        hidden_dims: tuple[int, ...] = (256, 256, 256),
        layernorm: bool = True,
        shortcut_steps: int = 4,
        max_steps: int = 128,
        bootstrap_frac: float = 0.25,
        unet_dims: tuple[int, ...] = (64, 128, 256),
        unet_kernel_size: int = 5,
        time_embed_dim: int = 64,
        unet_n_groups: int = 8,
    ):
        hidden_dims = [int(h) for h in hidden_dims]
        unet_dims = [int(d) for d in unet_dims]
        num_levels = _log2_exact(int(max_steps))
        if num_levels is None or max_steps < 2:
            raise ConfigError(f"policy.shortcut.max_steps must be a power of two >= 2, got {max_steps}")
        sample_level = step_level(shortcut_steps, max_steps)
        if not 0.0 <= bootstrap_frac < 1.0:
            raise ConfigError(f"policy.shortcut.bootstrap_frac must be in [0, 1), got {bootstrap_frac}")
        super().__init__(
            obs_dim,
            action_dim,
            act_horizon,
            velocity_net=velocity_net,
            hidden_dims=hidden_dims,
            layernorm=layernorm,
            shortcut_steps=int(shortcut_steps),
            max_steps=int(max_steps),
            bootstrap_frac=float(bootstrap_frac),
            unet_dims=unet_dims,
            unet_kernel_size=unet_kernel_size,
            time_embed_dim=time_embed_dim,
            unet_n_groups=unet_n_groups,
        )
        self.shortcut_steps, self.max_steps, self.bootstrap_frac = int(shortcut_steps), int(max_steps), bootstrap_frac
        self.num_levels = num_levels  # L; level L = finest step 1/M = the flow velocity (d = 0)
        self.sample_level = sample_level
        self.level_embed = nn.Embedding(num_levels + 1, time_embed_dim)
        self.net = build_denoiser_net(
            obs_dim + time_embed_dim,
            action_dim,
            act_horizon,
            velocity_net,
            hidden_dims,
            layernorm,
            unet_dims,
            unet_kernel_size,
            time_embed_dim,
            unet_n_groups,
        )

    @property
    def noise_shape(self) -> tuple[int, int]:
        """Shape of one chunk's start noise x0: (H, A)."""
        return (self.act_horizon, self.action_dim)

    def velocity(
        self, obs_n: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | float, level: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """s(x_t, t, d | obs) [B, H, A] at step level ``level`` (int or [B] long; None = L, the flow velocity)."""
        B = x_t.shape[0]
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        t = t.expand(B) if t.numel() == 1 else t.reshape(B)
        level = self.num_levels if level is None else level
        level = torch.as_tensor(level, dtype=torch.long, device=x_t.device)
        level = level.expand(B) if level.numel() == 1 else level.reshape(B)
        cond = torch.cat([obs_n, self.level_embed(level)], dim=-1)
        return self.net(x_t, t, cond)

    def integrate(self, obs_n: torch.Tensor, x0: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Unclamped shortcut solution x(1) from x(0) = x0 with ``steps`` steps of size 1/steps (differentiable)."""
        n = self.shortcut_steps if steps is None else int(steps)
        level = step_level(n, self.max_steps)
        dt = 1.0 / n
        x = x0
        for k in range(n):
            x = x + dt * self.velocity(obs_n, x, k * dt, level)
        return x

    def sample(
        self, obs_n: torch.Tensor, noise: torch.Tensor | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        """``policy.shortcut.steps`` shortcut steps from x0 (``noise`` > zeros if deterministic > randn); clamp to [-1, 1]."""
        B = obs_n.shape[0]
        shape = (B, self.act_horizon, self.action_dim)
        if noise is not None:
            x = noise.reshape(shape).to(obs_n)
        elif deterministic:
            x = torch.zeros(shape, dtype=obs_n.dtype, device=obs_n.device)
        else:
            x = torch.randn(shape, dtype=obs_n.dtype, device=obs_n.device)
        return self.integrate(obs_n, x).clamp(-1.0, 1.0)

    def bc_loss(
        self,
        obs_n: torch.Tensor,
        action_n: torch.Tensor,
        valid_mask: torch.Tensor | None,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Flow-matching + self-consistency loss (module docstring); ``weights`` [B] per-sample, detached.

        info (detached 0-d tensors; ``metrics_to_floats`` converts them with one sync): ``bc_loss`` (unweighted mean of the per-row losses), ``flow_loss`` (flow rows), ``shortcut_loss``
        (bootstrap rows; 0 when there are none).
        """
        B = obs_n.shape[0]
        dev, dt = action_n.device, action_n.dtype
        nb = int(self.bootstrap_frac * B)
        L, M = self.num_levels, self.max_steps
        x0 = torch.randn_like(action_n)

        # flow-matching rows: t on the 1/M grid, finest level (d = 0)
        t_flow = torch.randint(0, M, (B - nb,), device=dev).to(dt) / M
        x_flow, v_flow = flow_matching_target(x0[nb:], action_n[nb:], t_flow)

        # bootstrap rows: big step 2d = 2^-k, two half steps of d = 2^-(k+1) at level k + 1
        k = bootstrap_levels(nb, L).to(dev)
        t_boot = bootstrap_times(k, torch.rand(nb, device=dev, dtype=dt))
        x_boot, _ = flow_matching_target(x0[:nb], action_n[:nb], t_boot)
        d = torch.pow(2.0, -(k + 1).to(dt))
        with torch.no_grad():
            v_boot = shortcut_target(lambda x, tt: self.velocity(obs_n[:nb], x, tt, k + 1), x_boot, t_boot, d)

        x_t = torch.cat([x_boot, x_flow])
        t = torch.cat([t_boot, t_flow])
        level = torch.cat([k, torch.full((B - nb,), L, dtype=torch.long, device=dev)])
        target = torch.cat([v_boot, v_flow])
        loss, per_sample = masked_flow_loss(self.velocity(obs_n, x_t, t, level), target, valid_mask, weights)
        per_sample = per_sample.detach()
        zero = per_sample.new_zeros(())
        info = {
            "bc_loss": per_sample.mean(),
            "flow_loss": per_sample[nb:].mean() if nb < B else zero,
            "shortcut_loss": per_sample[:nb].mean() if nb > 0 else zero,
        }
        return loss, info
