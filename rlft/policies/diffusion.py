"""Diffusion policy over action chunks (Chi et al., 2023, "Diffusion Policy"): DDPM training with epsilon prediction,
DDIM sampling.

Forward process (DDPM, ``K = train_steps`` noise levels k = 0 .. K-1, ``abar_k = prod_{i<=k} (1 - beta_i)``):

    x_k = sqrt(abar_k) * a + sqrt(1 - abar_k) * eps,   eps ~ N(0, I)                     (``diffusion_forward``)

Schedules (``beta_schedule``): ``'cosine'`` (Nichol & Dhariwal 2021; Diffusion Policy's ``squaredcos_cap_v2``):
``beta_i = min(1 - abar(i+1/K) / abar(i/K), 0.999)`` with ``abar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)``;
``'linear'``: DDPM's betas 1e-4 .. 0.02 (defined for K = 1000) scaled by 1000 / K, so the total noise does not depend
on K (plain 1e-4 .. 0.02 over K = 100 steps would leave abar_{K-1} ~ 0.37, far from pure noise); capped at 0.999.

Loss (``bc_loss``): k ~ U{0..K-1}, ``|| eps_theta(x_k, t_k | obs) - eps ||^2`` averaged over each sample's valid chunk
steps (padded steps never enter), combined with the optional per-sample weights (``mean_b w_b l_b``).

Mapping onto the flow convention (t = 0 noise, t = 1 action; ``rlft.policies.flow``): noise level k is flow time

    t_k = 1 - (k + 1) / K                                                                  (``flow_time``)

so the noisiest level K-1 is t = 0 and the clean action (k = -1, abar = 1) is t = 1. The network (the flow policy's
MLP or U-Net, ``rlft.policies.denoiser``) receives t_k as its time input; it predicts eps, not a velocity.

Sampling (``sample``): DDIM (eta = 0, deterministic given the start) over ``inference_steps = S`` levels with
"trailing" spacing ``k_i = round(K - i K / S) - 1``, i = 0..S-1 (K = 100, S = 10: 99, 89, ..., 9), so the first step
is at the noisiest level (t = 0). The start ``x_T`` is the explicit ``noise`` if given (shape [B, H, A]), zeros when
``deterministic``, else N(0, I). One step from level k to k' (k' = -1 after the last, abar = 1), ``ddim_step``:

    a_hat = (x_k - sqrt(1 - abar_k) eps) / sqrt(abar_k)          (clipped to [-1, 1] when clip_sample)
    x_k'  = sqrt(abar_k') a_hat + sqrt(1 - abar_k') eps

(as diffusers' DDIMScheduler with its defaults: the network's eps is kept after clipping a_hat). The result is
clamped to [-1, 1].
"""

from __future__ import annotations

import math

import torch

from rlft.errors import ConfigError
from rlft.policies.base import Policy, register_policy
from rlft.policies.denoiser import build_denoiser_net
from rlft.policies.flow import masked_flow_loss

BETA_SCHEDULES = ("cosine", "linear")


# ----------------------------------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------------------------------
def beta_schedule(kind: str, num_steps: int) -> torch.Tensor:
    """Betas [K] (float64) of the ``'cosine'`` or ``'linear'`` schedule (module docstring)."""
    K = int(num_steps)
    if kind == "cosine":

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1.0 - abar((i + 1) / K) / abar(i / K), 0.999) for i in range(K)]
        return torch.tensor(betas, dtype=torch.float64)
    if kind == "linear":
        scale = 1000.0 / K
        return torch.linspace(1e-4 * scale, 0.02 * scale, K, dtype=torch.float64).clamp(max=0.999)
    raise ConfigError(f"policy.diffusion.beta_schedule: unknown schedule {kind!r}; use one of {BETA_SCHEDULES}")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """``abar_k = prod_{i<=k} (1 - beta_i)``, [K]."""
    return torch.cumprod(1.0 - betas, dim=0)


def flow_time(k: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Flow time of noise level k: ``t_k = 1 - (k + 1) / K`` (level K-1 -> t = 0, noise; k = -1 -> t = 1, action)."""
    return 1.0 - (k.to(torch.float32) + 1.0) / num_steps


def ddim_timesteps(num_train_steps: int, num_inference_steps: int) -> list[int]:
    """DDIM levels with trailing spacing, noisiest first: ``k_i = round(K - i K / S) - 1``, i = 0..S-1."""
    K, S = int(num_train_steps), int(num_inference_steps)
    return [int(round(K - i * K / S)) - 1 for i in range(S)]


def diffusion_forward(action: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """``x_k = sqrt(abar_k) a + sqrt(1 - abar_k) eps``; ``abar`` [B] (per sample) or a scalar."""
    ab = abar.reshape(-1, *([1] * (action.ndim - 1))).to(action)
    return ab.sqrt() * action + (1.0 - ab).sqrt() * eps


def ddim_step(
    x_k: torch.Tensor,
    eps: torch.Tensor,
    abar_k: torch.Tensor | float,
    abar_prev: torch.Tensor | float,
    clip_sample: bool,
) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from level k to the next (less noisy) level; see the module docstring."""
    abar_k = torch.as_tensor(abar_k, dtype=x_k.dtype, device=x_k.device)
    abar_prev = torch.as_tensor(abar_prev, dtype=x_k.dtype, device=x_k.device)
    a_hat = (x_k - (1.0 - abar_k).sqrt() * eps) / abar_k.sqrt()
    if clip_sample:
        a_hat = a_hat.clamp(-1.0, 1.0)
    return abar_prev.sqrt() * a_hat + (1.0 - abar_prev).sqrt() * eps


# ----------------------------------------------------------------------------------------------------------------
@register_policy
class DiffusionPolicy(Policy):
    """DDPM-trained, DDIM-sampled epsilon-prediction actor; see the module docstring."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        velocity_net: str = "mlp",
        hidden_dims: tuple[int, ...] = (256, 256, 256),
        layernorm: bool = True,
        train_steps: int = 100,
        inference_steps: int = 10,
        beta_schedule_kind: str = "cosine",
        clip_sample: bool = True,
        unet_dims: tuple[int, ...] = (64, 128, 256),
        unet_kernel_size: int = 5,
        time_embed_dim: int = 64,
        unet_n_groups: int = 8,
    ):
        hidden_dims = [int(h) for h in hidden_dims]
        unet_dims = [int(d) for d in unet_dims]
        if train_steps < 1:
            raise ConfigError(f"policy.diffusion.train_steps must be >= 1, got {train_steps}")
        if not 1 <= inference_steps <= train_steps:
            raise ConfigError(
                f"policy.diffusion.inference_steps must be in [1, diffusion_train_steps={train_steps}], got {inference_steps}"
            )
        betas = beta_schedule(beta_schedule_kind, train_steps)
        super().__init__(
            obs_dim,
            action_dim,
            act_horizon,
            velocity_net=velocity_net,
            hidden_dims=hidden_dims,
            layernorm=layernorm,
            train_steps=int(train_steps),
            inference_steps=int(inference_steps),
            beta_schedule_kind=beta_schedule_kind,
            clip_sample=bool(clip_sample),
            unet_dims=unet_dims,
            unet_kernel_size=unet_kernel_size,
            time_embed_dim=time_embed_dim,
            unet_n_groups=unet_n_groups,
        )
        self.train_steps, self.inference_steps, self.clip_sample = int(train_steps), int(inference_steps), clip_sample
        # derived from the kwargs, so not saved (non-persistent); moved with .to()
        self.register_buffer("alphas_cumprod", alphas_cumprod(betas).to(torch.float32), persistent=False)
        self.timesteps = ddim_timesteps(train_steps, inference_steps)
        self.net = build_denoiser_net(
            obs_dim,
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
        """Shape of one chunk's start noise x_T: (H, A)."""
        return (self.act_horizon, self.action_dim)

    def predict_eps(self, obs_n: torch.Tensor, x_k: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
        """eps_theta(x_k, t_k | obs) [B, H, A] at noise level ``k`` (int or [B] long)."""
        B = x_k.shape[0]
        k = torch.as_tensor(k, dtype=torch.long, device=x_k.device)
        k = k.expand(B) if k.numel() == 1 else k.reshape(B)
        return self.net(x_k, flow_time(k, self.train_steps).to(x_k), obs_n)

    def sample(
        self, obs_n: torch.Tensor, noise: torch.Tensor | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        """DDIM from x_T (``noise`` > zeros if deterministic > randn) over ``inference_steps`` levels; clamp [-1, 1]."""
        B = obs_n.shape[0]
        shape = (B, self.act_horizon, self.action_dim)
        if noise is not None:
            x = noise.reshape(shape).to(obs_n)
        elif deterministic:
            x = torch.zeros(shape, dtype=obs_n.dtype, device=obs_n.device)
        else:
            x = torch.randn(shape, dtype=obs_n.dtype, device=obs_n.device)
        ks = self.timesteps
        for i, k in enumerate(ks):
            abar_prev = self.alphas_cumprod[ks[i + 1]] if i + 1 < len(ks) else 1.0
            x = ddim_step(x, self.predict_eps(obs_n, x, k), self.alphas_cumprod[k], abar_prev, self.clip_sample)
        return x.clamp(-1.0, 1.0)

    def bc_loss(
        self,
        obs_n: torch.Tensor,
        action_n: torch.Tensor,
        valid_mask: torch.Tensor | None,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DDPM epsilon-prediction loss (module docstring); ``weights`` [B] per-sample, detached.

        info (detached 0-d tensors): ``bc_loss`` (unweighted masked eps MSE), ``diffusion_loss`` (the weighted loss
        that is optimised).
        """
        B = obs_n.shape[0]
        k = torch.randint(0, self.train_steps, (B,), device=action_n.device)
        eps = torch.randn_like(action_n)
        x_k = diffusion_forward(action_n, eps, self.alphas_cumprod[k])
        loss, per_sample = masked_flow_loss(self.predict_eps(obs_n, x_k, k), eps, valid_mask, weights)
        return loss, {"bc_loss": per_sample.detach().mean(), "diffusion_loss": loss.detach()}
