"""AWCP: advantage-weighted consistency policy over action chunks (offline).

An IQL critic (Kostrikov et al., 2022) and a consistency-flow actor (``rlft.policies.consistency``) trained by
advantage-weighted regression: the critic only ever sees dataset actions and the policy gets no Q gradient, so the
method stays in-distribution like IQL, while the actor is an expressive one-step generator. One update, with every
loss evaluated at the current parameters, then one optimiser step each (as ``rlft.algos.iql``):

* value:  ``L_V = E[L_tau(min_i Qtarget_i(s, a) - V(s))]``                 (``iql_value_loss``, expectile tau)
* critic: ``L_Q = sum_i E[(Q_i(s, a) - (r + bootstrap * V(s')))^2]``       (``td_loss``; bootstrap = gamma^k (1 - term))
* actor:  ``L_pi = mean_b w_b * l_b``, ``l_b`` the policy's per-sample BC loss (flow matching + consistency, padded
  steps masked) and ``w`` the *normalised* advantage weights (``normalized_advantage_weights``):

      A_b = min_i Qtarget_i(s_b, a_b) - V(s_b),   w_b = min(exp(beta A_b) / mean_c exp(beta A_c), max_weight)

  Normalising by the batch mean keeps the loss on the scale of plain BC whatever the advantages' scale (IQL's
  unnormalised ``exp(beta A)`` shrinks or inflates the effective learning rate with V's offset); ``max_weight``
  then caps how much of the batch one sample can claim. Computed with the max subtracted inside the exponent, so
  no weight overflows.

Logged: ``actor/awr_weights_mean`` / ``awr_weights_max`` (after clipping; the mean is < 1 exactly when the clip
bites), ``actor/awr_advantage_mean``, ``actor/eff_num`` (effective sample size as a fraction of the batch,
``(sum w)^2 / sum w^2 / B``: 1 = uniform weights, 1/B = one sample carries everything), plus the critic's and the
policy's own metrics (``bc_loss``, ``flow_loss``, ``consistency_loss``).

``rlft.algos.aw_shortcut`` applies the same update to the shortcut flow policy.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig, optimizer_step
from rlft.algos.losses import Info, iql_value_loss, metrics_to_floats, prefixed, td_loss, td_target
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import soft_update
from rlft.policies.config import PolicyConfig


# ---------------------------------------------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------------------------------------------
def normalized_advantage_weights(adv: torch.Tensor, beta: float, max_weight: float) -> tuple[torch.Tensor, Info]:
    """Batch-normalised, clipped exp-advantage weights (module docstring); ``adv`` [B], detached.

        w_b = min(exp(beta A_b) / mean_c exp(beta A_c), max_weight)
            = min(exp(beta (A_b - max A)) / mean_c exp(beta (A_c - max A)), max_weight)     (computed form)

    info: ``awr_weights_mean``, ``awr_weights_max``, ``awr_advantage_mean``, ``eff_num = (sum w)^2 / sum w^2 / B``.
    """
    z = beta * adv.detach()
    e = torch.exp(z - z.max())
    w = (e / e.mean()).clamp(max=max_weight)
    with torch.no_grad():
        info = {
            "awr_weights_mean": w.mean(),
            "awr_weights_max": w.max(),
            "awr_advantage_mean": adv.mean(),
            "eff_num": w.sum().square() / w.square().sum() / w.numel(),
        }
    return w, info


# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class AWCPConfig(CriticConfig):
    """Advantage-weighted consistency policy: IQL critic, normalised-weight flow + consistency BC actor. Critics: the
    value target and the advantage use the min over the target copies (updated after every update)."""

    policy: PolicyConfig = dataclasses.field(default_factory=lambda: PolicyConfig(kind="consistency"))
    """The actor: a consistency policy (one-step sampler by default)."""
    expectile: float = 0.7
    """Expectile tau of the value regression, in (0, 1) (IQL: 0.7; 0.9 for AntMaze and OGBench manipulation)."""
    beta: float = 3.0
    """Inverse temperature of the weights exp(beta * A) (before the batch normalisation)."""
    max_weight: float = 20.0
    """Upper clip of the normalised weights (whose batch mean is 1): at most max_weight / B of the batch's total
    weight on one sample."""
    actor_lr: float = 3e-4
    """Adam learning rate of the policy."""
    value_lr: float = 3e-4
    """Adam learning rate of the V network."""

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.algo_name
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"{name}.expectile must be in (0, 1), got {self.expectile}")
        if self.beta < 0:
            raise ConfigError(f"{name}.beta must be >= 0, got {self.beta}")
        if self.max_weight < 1.0:
            raise ConfigError(f"{name}.max_weight must be >= 1 (normalised weights average 1), got {self.max_weight}")


@register
class AWCP(Algorithm):
    """IQL critic + advantage-weighted (normalised, clipped) consistency-policy BC; no Q gradient into the actor."""

    Config: ClassVar[type[AlgoConfig]] = AWCPConfig
    name: ClassVar[str] = "awcp"
    supported_policies: ClassVar[tuple[str, ...]] = ("consistency",)

    def __init__(self, cfg: AWCPConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: AWCPConfig = cfg
        self.critic = self.critic_ensemble(act_horizon * action_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = self.value_net()
        self.actor_optim = torch.optim.Adam(self.policy.parameters(), lr=cfg.actor_lr, fused=True)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)
        self.value_optim = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr, fused=True)

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg = self.cfg
        with torch.no_grad():
            q_target_min = self.target_critic(batch.obs, batch.action).min(dim=0).values
            y = td_target(batch.reward, batch.bootstrap, self.value(batch.next_obs))

        # value: expectile regression of V(s) on min_i Qtarget_i(s, a)
        v = self.value(batch.obs)
        v_loss, v_info = iql_value_loss(q_target_min, v, cfg.expectile)
        optimizer_step(v_loss, self.value_optim)

        # critic: TD regression on y = r + bootstrap * V(s')
        q = self.critic(batch.obs, batch.action)
        q_loss, q_info = td_loss(q, y)
        optimizer_step(q_loss, self.critic_optim)

        # actor: the policy's BC loss weighted by normalised exp-advantages (dataset actions only, no Q gradient)
        weights, w_info = normalized_advantage_weights(q_target_min - v.detach(), cfg.beta, cfg.max_weight)
        pi_loss, pi_info = self.policy.bc_loss(batch.obs, batch.action, batch.valid_mask, weights=weights)
        optimizer_step(pi_loss, self.actor_optim)

        soft_update(self.target_critic, self.critic, cfg.tau)
        self.num_updates += 1

        metrics: dict[str, object] = prefixed("actor", pi_info)  # the policy's own (unweighted) bc_loss etc.
        metrics.update(prefixed("critic", v_info))
        metrics.update(prefixed("critic", q_info))
        metrics.update(prefixed("actor", w_info))
        metrics["actor/actor_loss"] = pi_loss.detach()
        return metrics_to_floats(metrics)
