"""Consistency flow policy over action chunks (consistency flow matching, Yang et al., 2024, "Consistency Flow
Matching"; consistency training, Song et al., 2023), in the flow convention of ``rlft.policies.flow``.

Convention: t = 0 is noise ``x0 ~ N(0, I)``, t = 1 is the normalised action chunk ``x1``, ``x_t = (1 - t) x0 + t x1``.
The network is the flow policy's velocity net ``v(x_t, t | obs)``; the *consistency function* of segment
``[s, e]`` (``K = segments``; ``e = (floor(t K) + 1) / K``, the end of the segment holding t) is

    f(x_t, t) = x_t + (e - t) * v(x_t, t)                                   (``consistency_fn``)

which maps any point of the segment to the segment's end point and satisfies the boundary condition f(x_e, e) = x_e
by construction. With K = 1 (the default), ``f(x_t, t)`` is the action itself and one-step generation is
``a = f(x0, 0) = x0 + v(x0, 0)``.

Training loss (``bc_loss``), per sample, with t ~ U[0, 1), one noise x0 and an adjacent time
``r = min(t + delta, e)`` on the *same* straight path (consistency training: the path replaces an ODE solver):

    L = flow_coef        * || v(x_t, t) - (x1 - x0) ||^2
      + consistency_coef * || f(x_t, t) - sg[f(x_r, r)] ||^2 / (r - t)^2

``sg`` is a stop-gradient: the target uses the current weights under ``torch.no_grad`` (Consistency-FM's choice,
also iCT's -- "Improved Techniques for Training Consistency Models" found an EMA teacher unnecessary). Dividing by
the time gap ``(r - t)^2`` makes the term's scale independent of ``delta`` (undivided it is O(delta^2) and vanishes
next to the flow loss); when r reaches the segment end, ``f(x_r, r) = x_e`` is the data point on the path and the
term equals the flow-matching error, so the boundary anchors the consistency chain. Consistency-FM's extra
velocity-consistency term ``alpha || v_t - v_r ||^2`` (alpha = 1e-5 in its configs) is omitted. Squared errors are
averaged over each sample's valid chunk steps only (padded steps never enter), then combined with the optional
per-sample weights (``mean_b w_b L_b``).

Sampling: ``flow_steps = K`` Euler steps of size 1/K, which is exactly the segment-wise consistency sampler
``x <- f(x, k / K)``; inherited from ``FlowPolicy`` (start noise: ``noise`` > zeros if deterministic > randn;
clamped to [-1, 1]; differentiable, which CPQL's Q term uses).
"""

from __future__ import annotations

import torch

from rlft.errors import ConfigError
from rlft.policies.base import register_policy
from rlft.policies.flow import FlowPolicy, flow_matching_target, masked_flow_loss
from rlft.policies.gaussian import weighted_batch_mean


# ----------------------------------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------------------------------
def segment_end(t: torch.Tensor, segments: int) -> torch.Tensor:
    """End ``e = (floor(t K) + 1) / K`` of the segment holding t (K = segments), for t in [0, 1); [B]."""
    return (torch.floor(t * segments) + 1.0) / segments


def consistency_fn(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """``f(x_t, t) = x_t + (end - t) * v``: the point the velocity v reaches at the segment end; t, end [B]."""
    gap = (end - t).reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t)
    return x_t + gap * v


def consistency_residual(
    v_t: torch.Tensor, v_r: torch.Tensor, u: torch.Tensor, t: torch.Tensor, r: torch.Tensor, end: torch.Tensor
) -> torch.Tensor:
    """``(f(x_t, t) - f(x_r, r)) / (r - t)`` for two points of one straight path (velocity ``u = x1 - x0``).

    Since ``x_t - x_r = -(r - t) u``, this equals ``((end - t) v_t - (end - r) v_r) / (r - t) - u``, the form
    computed here (no cancellation of nearly equal chunks when r - t is small; exactly ``v_t - u`` when r = end).
    ``v_t``, ``v_r``, ``u`` [B, H, A]; ``t``, ``r``, ``end`` [B].
    """
    shape = (-1, *([1] * (v_t.ndim - 1)))
    a = ((end - t) / (r - t)).reshape(shape).to(v_t)
    b = ((end - r) / (r - t)).reshape(shape).to(v_t)
    return a * v_t - b * v_r - u


def adjacent_time(t: torch.Tensor, delta: float, end: torch.Tensor) -> torch.Tensor:
    """``r = min(t + delta, end)``: the consistency target's time, never past the segment end; [B]."""
    return torch.minimum(t + delta, end)


# ----------------------------------------------------------------------------------------------------------------
@register_policy
class ConsistencyFlowPolicy(FlowPolicy):
    """Flow policy trained with flow matching + consistency (one-step by default); see the module docstring."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        velocity_net: str = "mlp",
        hidden_dims: tuple[int, ...] = (256, 256, 256),
        layernorm: bool = True,
        flow_steps: int = 1,
        unet_dims: tuple[int, ...] = (64, 128, 256),
        unet_kernel_size: int = 5,
        time_embed_dim: int = 64,
        unet_n_groups: int = 8,
        consistency_delta: float = 0.025,
        consistency_coef: float = 1.0,
        flow_coef: float = 1.0,
    ):
        if not 0.0 < consistency_delta <= 1.0:
            raise ConfigError(f"policy.consistency.delta must be in (0, 1], got {consistency_delta}")
        if consistency_coef < 0 or flow_coef < 0 or consistency_coef + flow_coef == 0:
            raise ConfigError(
                f"policy.consistency.coef ({consistency_coef}) and policy.consistency.flow_coef ({flow_coef}) must be "
                ">= 0 and not both 0"
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
        self.kwargs.update(
            consistency_delta=float(consistency_delta),
            consistency_coef=float(consistency_coef),
            flow_coef=float(flow_coef),
        )
        self.consistency_delta, self.consistency_coef, self.flow_coef = consistency_delta, consistency_coef, flow_coef

    @property
    def segments(self) -> int:
        """K: consistency segments = sampler steps."""
        return self.flow_steps

    def bc_loss(
        self,
        obs_n: torch.Tensor,
        action_n: torch.Tensor,
        valid_mask: torch.Tensor | None,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Flow-matching + consistency loss (module docstring); ``weights`` [B] per-sample, detached.

        info (detached 0-d tensors): ``bc_loss`` (unweighted mean of the combined per-sample loss), ``flow_loss``,
        ``consistency_loss`` (unweighted means of the two terms, before their coefficients).
        """
        B = obs_n.shape[0]
        x0 = torch.randn_like(action_n)
        t = torch.rand(B, dtype=action_n.dtype, device=action_n.device)
        end = segment_end(t, self.segments)
        r = adjacent_time(t, self.consistency_delta, end)
        x_t, u = flow_matching_target(x0, action_n, t)
        x_r, _ = flow_matching_target(x0, action_n, r)

        v_t = self.velocity(obs_n, x_t, t)
        with torch.no_grad():
            v_r = self.velocity(obs_n, x_r, r)
        residual = consistency_residual(v_t, v_r, u, t, r, end)  # (f(x_t, t) - sg f(x_r, r)) / (r - t)

        _, flow_ps = masked_flow_loss(v_t, u, valid_mask)
        _, cons_ps = masked_flow_loss(residual, torch.zeros_like(residual), valid_mask)
        per_sample = self.flow_coef * flow_ps + self.consistency_coef * cons_ps
        loss = weighted_batch_mean(per_sample, weights)
        info = {
            "bc_loss": per_sample.detach().mean(),
            "flow_loss": flow_ps.detach().mean(),
            "consistency_loss": cons_ps.detach().mean(),
        }
        return loss, info
