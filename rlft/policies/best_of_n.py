"""Best-of-N policy: sample N chunks from a flow BC policy, act with the one a critic ensemble values most.

The deployable artifact of Q-chunking (QC, Li et al. 2025) and decoupled Q-chunking (DQC): the policy is the
behaviour flow policy, the improvement is at selection time ("expected-max Q" policy extraction),

    a* = argmax_{j=1..N} agg_i Q_i(s, a_j),    a_j = flow(s, z_j),  z_j ~ N(0, I),

with ``agg`` the mean (default) or min over the critic ensemble. The critic lives inside the policy (attribute
``critic``, a ``CriticEnsemble`` over the flattened H-step chunk), so a saved file is all ``rlft eval`` needs and all
QC needs to continue training (offline QC -> online QC). ``flow`` is a ``FlowPolicy`` (or subclass; saved as class
name + constructor kwargs) and its ``sample(obs, noise=z)`` draws the candidates.

Noise and determinism:

* ``noise`` [B, N, H, A] given: the N candidates' start noises (scaled exploration noise, tests);
* ``noise`` [B, H, A] given: one start noise per chunk, decoded by the flow with no selection -- what a noise-space
  actor needs (DSRL steering this policy as its frozen base steers its flow; the critic is then unused);
* ``deterministic``: a fixed candidate set stored with the policy (buffer ``eval_noise`` [N, H, A], candidate 0 is
  all zeros -- the flow's own deterministic action -- and the rest fixed N(0, I) draws), so evaluation is a
  deterministic function of the observation and includes the plain flow's choice among the candidates;
* otherwise N fresh N(0, I) draws per observation.

Cost: N flow integrations per chunk (N x flow_steps velocity-net calls plus N critic calls per observation).

Only QC and DQC continue this policy (``needs_own_trainer``; they list it in ``Algorithm.continues``); other
algorithms refuse the hand-off with ``ConfigError``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rlft.errors import ConfigError
from rlft.nets.ensemble import CriticEnsemble, aggregate_q
from rlft.policies.base import Policy, register_policy
from rlft.policies.flow import FlowPolicy
from rlft.policies.onestep import build_inner_flow


def best_of_n(candidates: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick per row the candidate with the highest score: ``candidates`` [B, N, H, A], ``scores`` [B, N] ->
    (chosen [B, H, A], index [B]). Ties go to the lowest index."""
    idx = scores.argmax(dim=1)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), idx], idx


@register_policy
class BestOfNPolicy(Policy):
    """Flow BC policy + critic ensemble with best-of-N selection; see the module docstring."""

    needs_own_trainer: ClassVar[bool] = True

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        flow_class: str = "FlowPolicy",
        flow_kwargs: dict[str, Any] | None = None,
        num_critics: int = 2,
        critic_hidden_dims: tuple[int, ...] = (256, 256, 256),
        critic_layernorm: bool = True,
        critic_impl: str = "loop",
        num_samples: int = 32,
        q_agg: str = "mean",
    ):
        flow_kwargs = dict(flow_kwargs or dict(obs_dim=obs_dim, action_dim=action_dim, act_horizon=act_horizon))
        critic_hidden_dims = [int(h) for h in critic_hidden_dims]
        if critic_impl == "auto":  # resolved now: the saved weights' layout depends on it
            critic_impl = "batched" if torch.cuda.is_available() else "loop"
        super().__init__(
            obs_dim,
            action_dim,
            act_horizon,
            flow_class=flow_class,
            flow_kwargs=flow_kwargs,
            num_critics=num_critics,
            critic_hidden_dims=critic_hidden_dims,
            critic_layernorm=critic_layernorm,
            critic_impl=critic_impl,
            num_samples=num_samples,
            q_agg=q_agg,
        )
        self.flow = build_inner_flow(flow_class, flow_kwargs, (obs_dim, action_dim, act_horizon))
        self.critic = CriticEnsemble(
            obs_dim, act_horizon * action_dim, num_critics, tuple(critic_hidden_dims), critic_layernorm, critic_impl
        )
        self.register_buffer("eval_noise", torch.zeros(1, act_horizon, action_dim))
        self.set_selection(num_samples, q_agg)

    @classmethod
    def from_flow(cls, flow: FlowPolicy, **kwargs: Any) -> "BestOfNPolicy":
        """Wrap a trained flow policy (weights and normalisation copied) with a fresh critic ensemble."""
        p = cls(
            flow.obs_dim,
            flow.action_dim,
            flow.act_horizon,
            flow_class=type(flow).__name__,
            flow_kwargs=dict(flow.kwargs),
            **kwargs,
        )
        p.flow.load_state_dict(flow.state_dict())
        p.normalizer.load_state_dict(flow.normalizer.state_dict())
        return p.to(flow.normalizer.obs_mean.device)

    def set_selection(self, num_samples: int, q_agg: str) -> None:
        """Set N and the ensemble aggregation (kept in ``kwargs`` so a saved policy reloads with them). A new N
        redraws the fixed evaluation candidates (seeded, so the same N always gives the same set)."""
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
        aggregate_q(torch.zeros(1, 1), q_agg)  # validates
        self.num_samples, self.q_agg = int(num_samples), q_agg
        self.kwargs.update(num_samples=self.num_samples, q_agg=q_agg)
        if self.eval_noise.shape[0] != self.num_samples:
            g = torch.Generator().manual_seed(0)
            z = torch.randn(self.num_samples, self.act_horizon, self.action_dim, generator=g)
            z[0] = 0.0
            self.eval_noise = z.to(self.eval_noise.device)

    def score(self, obs_n: torch.Tensor, actions: torch.Tensor, critic: CriticEnsemble | None = None) -> torch.Tensor:
        """``agg_i Q_i(s, a)`` for candidates ``actions`` [B, N, H, A] -> [B, N] (``critic`` defaults to own)."""
        B, N = actions.shape[:2]
        obs_rep = obs_n.repeat_interleave(N, dim=0)
        q = (critic or self.critic)(obs_rep, actions.reshape(B * N, *actions.shape[2:]))
        return aggregate_q(q, self.q_agg).reshape(B, N)

    def candidates(self, obs_n: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Clamped flow samples from start noises [B, N, H, A] -> [B, N, H, A]."""
        B, N = noise.shape[:2]
        a = self.flow.sample(obs_n.repeat_interleave(N, dim=0), noise=noise.reshape(B * N, *noise.shape[2:]))
        return a.reshape(noise.shape)

    def sample(
        self, obs_n: torch.Tensor, noise: torch.Tensor | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        B = obs_n.shape[0]
        shape = (B, self.num_samples, self.act_horizon, self.action_dim)
        if noise is not None:
            if noise.ndim == 3 and noise.shape[0] == B and tuple(noise.shape[1:]) == shape[2:]:
                return self.flow.sample(obs_n, noise=noise)  # one explicit start noise: no selection
            if noise.ndim != 4 or noise.shape[0] != B or tuple(noise.shape[2:]) != shape[2:]:
                raise ValueError(
                    f"BestOfNPolicy noise must be [B, N, H, A] (candidates) or [B, H, A] (one start "
                    f"noise) with B={B}, (H, A)={shape[2:]}, got {tuple(noise.shape)}"
                )
            z = noise.to(obs_n)
        elif deterministic:
            z = self.eval_noise.to(obs_n).unsqueeze(0).expand(shape)
        else:
            z = torch.randn(shape, dtype=obs_n.dtype, device=obs_n.device)
        cands = self.candidates(obs_n, z)
        return best_of_n(cands, self.score(obs_n, cands))[0]

    def bc_loss(self, obs_n, action_n, valid_mask, weights=None):
        """The flow policy's flow-matching loss (``FlowPolicy.bc_loss``)."""
        return self.flow.bc_loss(obs_n, action_n, valid_mask, weights)
