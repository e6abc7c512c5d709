"""Tanh-squashed diagonal Gaussian policy over flattened action chunks (SAC's actor, Haarnoja et al. 2018).

An MLP maps the normalised observation to a mean ``mu`` and a log standard deviation for each of the ``H*A`` chunk
dimensions. A pre-squash sample is ``u = mu + std * eps`` (eps ~ N(0, I)) and the action is ``a = tanh(u)``, so
actions lie in (-1, 1), the normalised action space.

log-std bounding: the raw head output ``r`` is mapped *smoothly* into ``[log_std_min, log_std_max]`` by
``log_std = log_std_min + (log_std_max - log_std_min) * (tanh(r) + 1) / 2`` (no hard clamp, so the bound never
kills the gradient).

Density (change of variables, per dimension, summed over dimensions):

    log pi(a|s) = log N(u; mu, std) - log(1 - tanh(u)^2),
    log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))      (numerically stable form)

For given actions (``log_prob``), ``u = atanh(clip(a, -(1 - atanh_eps), 1 - atanh_eps))``; with the default
``atanh_eps = 1e-6`` a data action at exactly +-1 maps to |u| ~ 7.25, where the Jacobian term alone contributes
~+13.1 nats per dimension -- data sets whose actions sit on the box boundary get large, very negative NLLs.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from rlft.errors import ConfigError
from rlft.nets.mlp import MLP
from rlft.policies.base import Policy, register_policy

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------------------------------
def tanh_log_abs_det_jacobian(u: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log |d tanh(u) / du| = log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))``.

    The right-hand form is exact (``1 - tanh^2 u = 4 / (e^u + e^-u)^2``) and stays finite for large |u|.
    """
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


def squashed_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density of ``a = tanh(u)``, ``u ~ N(mean, exp(log_std)^2)``, evaluated at pre-squash ``u``:

        log N(u; mean, std) - log(1 - tanh(u)^2)
        = -0.5 * ((u - mean) / std)^2 - log_std - 0.5 * log(2 pi) - 2 * (log 2 - u - softplus(-2u)).

    Sum over dimensions for the log-density of a chunk.
    """
    z = (u - mean) * torch.exp(-log_std)
    return -0.5 * z.pow(2) - log_std - _LOG_SQRT_2PI - tanh_log_abs_det_jacobian(u)


def masked_sum(x: torch.Tensor, valid_mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` [B, H, A] -> [B]: sum over the valid steps' dimensions (``valid_mask`` [B, H], 1 = valid; None = all)."""
    if valid_mask is None:
        return x.sum(dim=(1, 2))
    return (x * valid_mask.unsqueeze(-1).to(x.dtype)).sum(dim=(1, 2))


def valid_dim_count(valid_mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    """Number of valid scalar dimensions per sample: ``sum_h mask[b, h] * A`` (at least 1 to avoid 0/0), [B]."""
    B, H, A = shape
    if valid_mask is None:
        return torch.full((B,), float(H * A))
    return (valid_mask.sum(dim=1) * A).clamp_min(1.0)


def weighted_batch_mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``mean_b w_b * l_b`` (plain mean if ``weights`` is None). Weights are detached: they never get gradients.

    This is the AWR/IQL convention (exp-advantage weights are *not* renormalised to sum to one).
    """
    if weights is None:
        return per_sample.mean()
    return (weights.detach().reshape(-1).to(per_sample.dtype) * per_sample).mean()


def gaussian_bc_nll(
    log_prob_dims: torch.Tensor, valid_mask: torch.Tensor | None, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted NLL normalised per valid dimension.

    ``log_prob_dims`` [B, H, A] elementwise log-densities. Per sample
    ``nll_b = -(sum_{h valid, a} log_prob[b, h, a]) / (A * #valid steps of b)``; the loss is
    ``mean_b w_b * nll_b``. Returns ``(loss, nll_per_sample [B])``.
    """
    nll = -masked_sum(log_prob_dims, valid_mask) / valid_dim_count(valid_mask, log_prob_dims.shape).to(log_prob_dims)
    return weighted_batch_mean(nll, weights), nll


# ----------------------------------------------------------------------------------------------------------------
@register_policy
class GaussianPolicy(Policy):
    """Tanh-squashed diagonal Gaussian over the flattened chunk; see the module docstring."""

    has_log_prob = True

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        hidden_dims: tuple[int, ...] = (256, 256, 256),
        layernorm: bool = True,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        atanh_eps: float = 1e-6,
    ):
        hidden_dims = tuple(int(h) for h in hidden_dims)
        if not log_std_min < log_std_max:
            raise ConfigError(
                f"policy.gaussian.log_std_min ({log_std_min}) must be < policy.gaussian.log_std_max ({log_std_max})"
            )
        if not 0.0 < atanh_eps < 1.0:
            raise ConfigError(f"policy.gaussian.atanh_eps must be in (0, 1), got {atanh_eps}")
        super().__init__(
            obs_dim,
            action_dim,
            act_horizon,
            hidden_dims=list(hidden_dims),
            layernorm=layernorm,
            log_std_min=log_std_min,
            log_std_max=log_std_max,
            atanh_eps=atanh_eps,
        )
        self.log_std_min, self.log_std_max, self.atanh_eps = float(log_std_min), float(log_std_max), float(atanh_eps)
        self.flat_dim = act_horizon * action_dim
        self.net = MLP(obs_dim, hidden_dims, 2 * self.flat_dim, layernorm=layernorm)

    # ---- distribution ----
    def dist_params(self, obs_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [B, O] -> (mean, log_std), each [B, H, A] (pre-squash; log_std tanh-rescaled into its bounds)."""
        mean, raw = self.net(obs_n).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw) + 1.0)
        shape = (obs_n.shape[0], self.act_horizon, self.action_dim)
        return mean.reshape(shape), log_std.reshape(shape)

    def rsample_log_prob(self, obs_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample ``a = tanh(mu + std * eps)`` [B, H, A] and its log-density [B] (tanh Jacobian in)."""
        mean, log_std = self.dist_params(obs_n)
        u = mean + torch.exp(log_std) * torch.randn_like(mean)
        return torch.tanh(u), squashed_gaussian_log_prob(u, mean, log_std).sum(dim=(1, 2))

    def _pre_squash(self, action_n: torch.Tensor) -> torch.Tensor:
        lim = 1.0 - self.atanh_eps
        return torch.atanh(action_n.clamp(-lim, lim))

    def log_prob_dims(self, obs_n: torch.Tensor, action_n: torch.Tensor) -> torch.Tensor:
        """Elementwise log-density [B, H, A] of given normalised actions (atanh of actions clipped to +-(1-eps))."""
        mean, log_std = self.dist_params(obs_n)
        return squashed_gaussian_log_prob(self._pre_squash(action_n), mean, log_std)

    def log_prob(
        self, obs_n: torch.Tensor, action_n: torch.Tensor, valid_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log pi(a|s) [B] of given chunks; with ``valid_mask`` [B, H] only valid steps' dimensions are summed."""
        return masked_sum(self.log_prob_dims(obs_n, action_n), valid_mask)

    def entropy_estimate(self, obs_n: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Monte-Carlo entropy of the squashed chunk distribution, ``-mean_k log pi(a_k|s)``, [B] (nats per chunk)."""
        mean, log_std = self.dist_params(obs_n)
        total = torch.zeros(obs_n.shape[0], device=obs_n.device)
        for _ in range(num_samples):
            u = mean + torch.exp(log_std) * torch.randn_like(mean)
            total = total - squashed_gaussian_log_prob(u, mean, log_std).sum(dim=(1, 2))
        return total / num_samples

    # ---- Policy API ----
    def sample(
        self, obs_n: torch.Tensor, noise: torch.Tensor | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        """Normalised chunk [B, H, A] in (-1, 1).

        ``noise`` (standard normal [B, H, A]) is used as the Gaussian eps and overrides ``deterministic``;
        otherwise ``deterministic=True`` returns ``tanh(mean)`` and ``False`` a fresh sample.
        """
        mean, log_std = self.dist_params(obs_n)
        if noise is not None:
            return torch.tanh(mean + torch.exp(log_std) * noise.reshape(mean.shape).to(mean))
        if deterministic:
            return torch.tanh(mean)
        return torch.tanh(mean + torch.exp(log_std) * torch.randn_like(mean))

    def bc_loss(
        self,
        obs_n: torch.Tensor,
        action_n: torch.Tensor,
        valid_mask: torch.Tensor | None,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted NLL per valid dimension (see ``gaussian_bc_nll``); padded steps never enter it.

        info: ``bc_loss`` (unweighted mean NLL per valid dim), ``entropy`` (-log pi of a sample, nats per chunk,
        batch mean), ``log_std_mean`` (over all chunk dims), ``mse`` (tanh(mean) vs data on valid steps).
        """
        mean, log_std = self.dist_params(obs_n)
        lp = squashed_gaussian_log_prob(self._pre_squash(action_n), mean, log_std)
        loss, nll = gaussian_bc_nll(lp, valid_mask, weights)
        with torch.no_grad():
            u = mean + torch.exp(log_std) * torch.randn_like(mean)
            entropy = -squashed_gaussian_log_prob(u, mean, log_std).sum(dim=(1, 2)).mean()
            n = valid_dim_count(valid_mask, action_n.shape).to(mean)
            mse = (masked_sum((torch.tanh(mean) - action_n).pow(2), valid_mask) / n).mean()
        info = {
            "bc_loss": float(nll.mean().detach()),
            "entropy": float(entropy),
            "log_std_mean": float(log_std.mean().detach()),
            "mse": float(mse),
        }
        return loss, info
