"""CPQL (Chen et al., 2023, "Boosting Continuous Control with Consistency Policy") over action chunks.

A consistency policy (``policy.kind: consistency``, ``rlft.policies.consistency``) trained with its own BC loss plus
a Q-maximisation term through its one-step sampler, and a twin critic trained TD3-style. One update:

* critic:  ``L_Q = sum_i E[(Q_i(s, a) - y)^2]``,  ``y = r + bootstrap * min_i Qtarget_i(s', a')``,
           ``a' = pi(s')`` a fresh sample of the current policy (its consistency sampler from new noise, no grad;
           CPQL's ``diffusion.sample(model=self.actor, state=next_state)``); ``bootstrap = gamma^k (1 - terminated)``.
* actor:   ``L_pi = bc_coef * L_bc + eta * L_q``  (``cpql_actor_loss``) with ``L_bc = policy.bc_loss(s, a)`` (flow
           matching + consistency, padded steps masked) and, on ``a_pi = pi(s)`` sampled *with* gradient through
           the sampler (one network call with ``policy.consistency.steps = 1``),

               L_q = -E[Q_i(s, a_pi)] / E|Q_j(s, a_pi)|     (q_normalize; offline CPQL, after Diffusion-QL)
               L_q = -E[min_i Q_i(s, a_pi)]                  (otherwise; CPQL's online form)

           with ``i`` a critic drawn uniformly at each update and ``j = (i + 1) mod N`` (for the twin critic:
           CPQL's coin flip between ``-Q1 / |Q2|`` and ``-Q2 / |Q1|``); the normaliser is detached. Only the policy's
           parameters get this gradient.
* targets: the target critics follow the critics by Polyak averaging with rate ``tau`` after every update (CPQL's
           code uses an EMA of 0.995 every 5 updates after 1000; the per-update Polyak form is TD3's).

Adaptation to the flow convention: CPQL's consistency model is the Karras/EDM one (sigma from 80 down to 0.002); here
the consistency function is ``f(x_t, t) = x_t + (1 - t) v(x_t, t)`` with t = 0 noise and t = 1 action, and the
one-step policy is ``f(x0, 0)`` (``rlft.policies.consistency``). Gradient norms are clipped (CPQL's ``grad_norm``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig, optimizer_step
from rlft.algos.losses import Info, metrics_to_floats, prefixed, td_loss, td_target
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import soft_update
from rlft.policies.config import PolicyConfig


# ---------------------------------------------------------------------------------------------------------------
# pure losses
# ---------------------------------------------------------------------------------------------------------------
def cpql_actor_loss(
    bc_loss: torch.Tensor, q_pi: torch.Tensor, bc_coef: float, eta: float, q_index: int = 0, normalize: bool = True
) -> tuple[torch.Tensor, Info]:
    """CPQL's actor loss ``bc_coef * bc_loss + eta * L_q`` (module docstring).

    ``bc_loss`` scalar (with grad); ``q_pi`` [N, B] critic values of the policy's actions (with grad through the
    actions); ``q_index`` the critic i of the normalised form (normaliser j = (i + 1) mod N; with N = 1, i = j).
    info: ``actor_loss``, ``q_loss`` (L_q), ``actor_q`` (mean over members and batch of Q(s, pi(s))),
    ``actor_lam`` (the effective weight of -E[Q_i]: eta / E|Q_j| when normalised, eta otherwise).
    """
    n = q_pi.shape[0]
    if normalize:
        scale = q_pi[(q_index + 1) % n].abs().mean().detach().clamp_min(1e-6)
        q_loss = -q_pi[q_index].mean() / scale
        lam = eta / scale
    else:
        q_loss = -q_pi.min(dim=0).values.mean()
        lam = torch.as_tensor(float(eta), device=q_pi.device)
    loss = bc_coef * bc_loss + eta * q_loss
    with torch.no_grad():
        info = {"actor_loss": loss.detach(), "q_loss": q_loss.detach(), "actor_q": q_pi.mean(), "actor_lam": lam}
    return loss, info


# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CPQLConfig(CriticConfig):
    """CPQL: consistency policy + Q-learning (offline by default; online with q_normalize=False). Critics: a twin
    critic in the paper; the TD target uses the min; targets updated after every update."""

    policy: PolicyConfig = dataclasses.field(default_factory=lambda: PolicyConfig(kind="consistency"))
    """The actor: a consistency policy (one-step sampler by default)."""
    bc_coef: float = 1.0
    """alpha: weight of the policy's BC (flow + consistency) loss (CPQL offline: 1.0)."""
    eta: float = 1.0
    """eta: weight of the Q term (CPQL offline: 0.5 - 4.5 per D4RL task; 1.0 for most)."""
    q_normalize: bool = True
    """Divide the Q term by the detached mean |Q| of the other critic (CPQL offline; False = -min_i Q, online)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the policy."""
    grad_clip: float | None = 5.0
    """Clip the actor's and the critics' gradients to this global L2 norm (CPQL's grad_norm: 1 - 10 per task);
    None = no clipping."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bc_coef < 0:
            raise ConfigError(f"cpql.bc_coef must be >= 0, got {self.bc_coef}")
        if self.eta < 0:
            raise ConfigError(f"cpql.eta must be >= 0, got {self.eta}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"cpql.grad_clip must be > 0 or null, got {self.grad_clip}")


@register
class CPQL(Algorithm):
    """Consistency policy with Q-learning: twin TD3-style critic, BC + normalised-Q actor loss."""

    Config: ClassVar[type[AlgoConfig]] = CPQLConfig
    name: ClassVar[str] = "cpql"
    supported_policies: ClassVar[tuple[str, ...]] = ("consistency",)

    def __init__(self, cfg: CPQLConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: CPQLConfig = cfg
        self.critic = self.critic_ensemble(act_horizon * action_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_params = list(self.policy.parameters())
        self.actor_optim = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr, fused=True)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg = self.cfg
        metrics: dict[str, object] = {}

        # ---- critic: TD3-style twin target from a fresh policy sample at s' ----
        with torch.no_grad():
            next_action = self.policy.sample(batch.next_obs)
            next_q = self.target_critic(batch.next_obs, next_action)
            y = td_target(batch.reward, batch.bootstrap, next_q.min(dim=0).values)
        q = self.critic(batch.obs, batch.action)
        critic_loss, critic_info = td_loss(q, y)
        norm = optimizer_step(critic_loss, self.critic_optim, max_grad_norm=cfg.grad_clip)
        if norm is not None:
            metrics["critic/grad_norm"] = norm
        metrics.update(prefixed("critic", critic_info))

        # ---- actor: BC (flow + consistency) + eta * normalised -Q through the one-step sampler ----
        bc, bc_info = self.policy.bc_loss(batch.obs, batch.action, batch.valid_mask)
        action_pi = self.policy.sample(batch.obs)  # differentiable consistency sampler, fresh noise
        q_pi = self.critic(batch.obs, action_pi)
        q_index = int(torch.randint(cfg.num_critics, ()))  # CPU draw from torch's global RNG (no device sync)
        actor_loss, actor_info = cpql_actor_loss(bc, q_pi, cfg.bc_coef, cfg.eta, q_index, cfg.q_normalize)
        norm = optimizer_step(actor_loss, self.actor_optim, self.actor_params, cfg.grad_clip)  # no grad into critics
        if norm is not None:
            metrics["actor/grad_norm"] = norm
        metrics.update(prefixed("actor", bc_info))
        metrics.update(prefixed("actor", actor_info))

        soft_update(self.target_critic, self.critic, cfg.tau)
        self.num_updates += 1
        return metrics_to_floats(metrics)
