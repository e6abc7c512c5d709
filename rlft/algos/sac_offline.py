"""Offline SAC over action chunks with four interchangeable actor losses on one shared critic: a controlled study of
why offline SAC fails on demonstration data, and of a Gaussian vs a flow actor under the same critic.

The setup is the one practitioners reach for first (and the one an unpublished offline-SAC study on ManiSkill
LiftPegUpright-v1 ran; docs/algorithms/sac_offline.md): a tanh-squashed diagonal Gaussian over the flattened chunk
(``GaussianPolicy``) trained offline with a SAC critic ensemble and automatic temperature, under four actor losses.
Each variant fails in its own way (temperature explosion, Q exploitation of out-of-data chunks, near-uniform advantage
weights), which ``rlft report`` diagnoses; ``policy.kind: flow`` swaps the actor and keeps everything else.

Why one algorithm and not configs of ``sac``, ``td3bc``, ``awr`` and ``iql``: the study's variable is the actor loss
alone. Those four algorithms each bring their own critic target, value net, temperature and update order, so a
difference between them would not isolate the actor loss; here the critic, target, temperature and schedule are
shared code and ``actor_loss_type`` is the only switch.

One update (critic, then the IQL value net when used, then actor and temperature):

* critic:  ``L_Q = sum_i E[(Q_i(s, a) - y)^2]`` with the soft SAC target
           ``y = r + bootstrap * (min_i Qtarget_i(s', a') - alpha * log pi(a'|s'))``, ``a' ~ pi(.|s')``
           (``critic_backup='policy'``; the entropy term only with ``backup_entropy`` and a Gaussian actor), or
           ``y = r + bootstrap * V(s')`` (``critic_backup='value'``, IQL's in-sample backup; iql only).
* actor (``actor_loss_type``), ``a_pi`` the actor's reparameterised sample at s:

  ``sac``    Gaussian: ``E[alpha * log pi(a_pi|s) - mean_i Q_i(s, a_pi)]``.
             Flow: ``-E[mean_i Q_i(s, a_pi)] + flow_bc_coef * flow_matching(s, a_data)``, ``a_pi`` the Euler-
             integrated flow from a fresh N(0, I) noise, differentiated through every step (no entropy exists).
  ``td3bc``  ``-lambda * E[mean_i Q_i(s, a_pi)] + mse_valid(a_pi, a_data)``, ``lambda = td3bc_alpha / (td3bc_alpha +
             mean|Q|)`` (``td3bc_lam_form='bounded'``, in (0, 1]; ``'paper'`` gives TD3+BC's ``alpha / mean|Q|``), detached.
  ``awr``    ``E[w * nll(a_data|s)]``, ``w = min(exp(A / awr_temperature), awr_max_weight)``,
             ``A = min_i Q_i(s, a_data) - min_i Q_i(s, a_pi)`` (a one-sample estimate of Q - V, with V(s) = E_pi Q).
  ``iql``    ``E[w * nll(a_data|s)]``, ``w = min(exp(iql_beta * A), iql_max_weight)``,
             ``A = min_i Qtarget_i(s, a_data) - V(s)``, V trained by expectile regression (``iql_expectile``) on
             ``min_i Qtarget_i(s, a_data)``.

  ``nll`` is the chunk's negative log-likelihood summed over its valid steps (nats per chunk, the same units as the
  entropy term) for the Gaussian, and the flow-matching loss (weighted per sample) for the flow.
  ``actor/bc_loss`` is each loss's data term: the masked MSE for td3bc, the unweighted NLL per
  valid dimension (Gaussian) or flow-matching loss (flow) for the others (for Gaussian 'sac' a no-grad diagnostic).
  With a Gaussian actor and ``entropy_bonus`` the td3bc/awr/iql losses also get ``+ alpha * E[log pi(a_pi|s)]`` --
  an extra entropy bonus some offline-SAC implementations add, the only place alpha enters those losses.
* temperature (Gaussian only): ``L_alpha = -log alpha * E[log pi(a_pi|s) + H_target]``, every update and every
  actor loss type.

Target entropy: ``target_entropy`` (nats per chunk); None = SAC's automatic ``-H * A`` (-56 for 8x7 chunks). That
default is deliberate: it is the value that causes the temperature explosion under study
(a chunk Gaussian fitted to demonstrations has log pi ~ +100, so ``log pi + H_target > 0`` keeps raising alpha while,
in the awr/iql losses, alpha cannot raise the entropy). It is logged as ``alpha/target_entropy`` every update; set
e.g. ``target_entropy: -28`` (-0.5 per dimension) or ``learn_temperature: false`` to test the fix.

Flow actor: it has no tractable density, so no temperature is learnt, no entropy term is added anywhere and no
``alpha/*`` metric is logged (the algorithm has no ``temperature`` then); ``init_temperature`` etc. are ignored. Every
other part (critic, value net, weights, lambda) is identical, so ``policy.kind`` alone switches Gaussian vs flow.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar, Literal

import torch

from rlft.algos import register
from rlft.algos.awr import awr_weights
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig, optimizer_step
from rlft.algos.losses import (
    Info,
    iql_value_loss,
    iql_weights,
    metrics_to_floats,
    prefixed,
    sac_actor_loss,
    sac_critic_target,
    td_loss,
    td_target,
)
from rlft.algos.td3bc import td3bc_actor_loss
from rlft.algos.temperature import Temperature
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import soft_update
from rlft.policies.gaussian import valid_dim_count

ACTOR_LOSS_TYPES = ("sac", "td3bc", "awr", "iql")


# ---------------------------------------------------------------------------------------------------------------
# pure losses
# ---------------------------------------------------------------------------------------------------------------
def weighted_nll_loss(nll: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_b w_b * nll_b`` with ``weights`` detached (AWR/IQL's weighted likelihood; no renormalisation)."""
    return (weights.detach() * nll).mean()


def entropy_bonus(log_prob: torch.Tensor, alpha: torch.Tensor | float) -> tuple[torch.Tensor, Info]:
    """The entropy term added to a non-SAC actor loss: ``alpha * mean_b log pi(a_b|s_b)`` (``a_b`` reparameterised,
    ``alpha`` detached). info: ``entropy`` (-mean log pi, nats per chunk)."""
    return alpha * log_prob.mean(), {"entropy": -log_prob.detach().mean()}


# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SACOfflineConfig(CriticConfig):
    """Offline SAC with four actor losses (sac, td3bc, awr, iql) on one critic, Gaussian or flow actor. Critics: the
    TD target uses the min over the target copies; the widths apply to the IQL V network too."""

    actor_loss_type: Literal["sac", "td3bc", "awr", "iql"] = "sac"
    """'sac' (reparameterised Q maximisation), 'td3bc', 'awr' or 'iql' (see the module docstring)."""
    critic_backup: Literal["policy", "value"] = "policy"
    """'policy': soft SAC target at a' ~ pi(s'); 'value': r + bootstrap * V(s') (only with actor_loss_type iql)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the policy."""
    value_lr: float = 3e-4
    """Adam learning rate of the IQL V network."""
    temperature_lr: float = 3e-4
    """Adam learning rate of log(alpha) (Gaussian actor)."""
    init_temperature: float = 1.0
    """Initial alpha (SAC's 1.0; Gaussian actor only)."""
    learn_temperature: bool = True
    """Tune alpha towards the target entropy (Gaussian actor only)."""
    target_entropy: float | None = None
    """Target entropy in nats per chunk; None = SAC's automatic -H*A (the temperature-explosion setting; see the module
    docstring)."""
    backup_entropy: bool = True
    """Soft backup: subtract alpha * log pi(a'|s') in the TD target (Gaussian actor, critic_backup 'policy')."""
    entropy_bonus: bool = True
    """Gaussian actor: add alpha * E[log pi(a_pi|s)] to the td3bc/awr/iql actor losses (an extra entropy bonus)."""
    td3bc_alpha: float = 2.5
    """td3bc: the alpha of lambda."""
    td3bc_lam_form: Literal["bounded", "paper"] = "bounded"
    """td3bc: 'bounded' (lambda = alpha / (alpha + mean|Q|), in (0, 1]) or 'paper' (alpha / mean|Q|, TD3+BC's)."""
    awr_temperature: float = 1.0
    """awr: w = exp(A / awr_temperature)."""
    awr_max_weight: float = 20.0
    """awr: upper clip of the weights."""
    iql_expectile: float = 0.7
    """iql: expectile of the V regression, in (0, 1)."""
    iql_beta: float = 3.0
    """iql: inverse temperature, w = exp(iql_beta * A)."""
    iql_max_weight: float = 100.0
    """iql: upper clip of the weights."""
    flow_bc_coef: float = 1.0
    """Flow actor with actor_loss_type 'sac': weight of the flow-matching BC term added to -Q (0 = pure Q
    maximisation; the other loss types have their own data term)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.actor_loss_type not in ACTOR_LOSS_TYPES:
            raise ConfigError(
                f"sac_offline.actor_loss_type must be one of {ACTOR_LOSS_TYPES}, got {self.actor_loss_type!r}"
            )
        if self.critic_backup == "value" and self.actor_loss_type != "iql":
            raise ConfigError("sac_offline.critic_backup 'value' needs the IQL V network: use actor_loss_type iql")
        if self.init_temperature <= 0:
            raise ConfigError(f"sac_offline.init_temperature must be > 0, got {self.init_temperature}")
        if self.awr_temperature <= 0:
            raise ConfigError(f"sac_offline.awr_temperature must be > 0, got {self.awr_temperature}")
        if self.awr_max_weight <= 0 or self.iql_max_weight <= 0:
            raise ConfigError("sac_offline.awr_max_weight and iql_max_weight must be > 0")
        if not 0.0 < self.iql_expectile < 1.0:
            raise ConfigError(f"sac_offline.iql_expectile must be in (0, 1), got {self.iql_expectile}")
        if self.flow_bc_coef < 0:
            raise ConfigError(f"sac_offline.flow_bc_coef must be >= 0, got {self.flow_bc_coef}")


@register
class SACOffline(Algorithm):
    """Offline SAC: critic ensemble, auto temperature, four actor losses on one critic; Gaussian or flow actor."""

    Config: ClassVar[type[AlgoConfig]] = SACOfflineConfig
    name: ClassVar[str] = "sac_offline"
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian", "flow")

    def __init__(
        self, cfg: SACOfflineConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"
    ):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: SACOfflineConfig = cfg
        self.stochastic = bool(getattr(self.policy, "has_log_prob", False))  # entropy terms exist (Gaussian)
        self.critic = self.critic_ensemble(act_horizon * action_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_params = list(self.policy.parameters())
        self.actor_optim = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr, fused=True)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)
        if cfg.actor_loss_type == "iql":
            self.value = self.value_net()
            self.value_optim = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr, fused=True)
        if self.stochastic:
            self.temperature = Temperature(
                cfg.init_temperature,
                cfg.temperature_lr,
                cfg.learn_temperature,
                cfg.target_entropy if cfg.target_entropy is not None else -float(act_horizon * action_dim),
                device=self.device,
            )

    # ---- pieces ----
    def _alpha(self) -> torch.Tensor | float:
        return self.temperature.alpha if self.stochastic else 0.0

    def _critic_target(self, batch: ChunkBatch, alpha) -> torch.Tensor:
        if self.cfg.critic_backup == "value":
            return td_target(batch.reward, batch.bootstrap, self.value(batch.next_obs))
        if self.stochastic:
            a_next, logp_next = self.policy.rsample_log_prob(batch.next_obs)
        else:
            a_next, logp_next = self.policy.sample(batch.next_obs), torch.zeros_like(batch.reward)
        return sac_critic_target(
            self.target_critic(batch.next_obs, a_next),
            logp_next,
            batch.reward,
            batch.bootstrap,
            alpha if self.cfg.backup_entropy else 0.0,
        )

    def _weighted_likelihood(self, batch: ChunkBatch, weights: torch.Tensor) -> tuple[torch.Tensor, Info]:
        """``mean_b w_b * nll_b`` of the data chunks: chunk NLL (Gaussian) or flow matching (flow)."""
        if self.stochastic:
            nll = -self.policy.log_prob(batch.obs, batch.action, batch.valid_mask)  # [B], nats per chunk
            dims = valid_dim_count(batch.valid_mask, batch.action.shape).to(nll)
            return weighted_nll_loss(nll, weights), {"bc_loss": (nll.detach() / dims).mean()}
        loss, info = self.policy.bc_loss(batch.obs, batch.action, batch.valid_mask, weights=weights)
        return loss, {"bc_loss": info["bc_loss"]}

    def _critic_step(self, batch: ChunkBatch, alpha) -> Info:
        """One TD step of the critic ensemble, then the Polyak update of its targets."""
        with torch.no_grad():
            y = self._critic_target(batch, alpha)
        critic_loss, info = td_loss(self.critic(batch.obs, batch.action), y)
        optimizer_step(critic_loss, self.critic_optim)
        soft_update(self.target_critic, self.critic, self.cfg.tau)
        return info

    def _value_step(self, batch: ChunkBatch) -> tuple[torch.Tensor, torch.Tensor, Info]:
        """IQL's V: one expectile-regression step on ``min_i Qtarget_i(s, a_data)``; returns that target and V(s)."""
        with torch.no_grad():
            q_t = self.target_critic(batch.obs, batch.action).min(dim=0).values
        v = self.value(batch.obs)
        v_loss, info = iql_value_loss(q_t, v, self.cfg.iql_expectile)
        optimizer_step(v_loss, self.value_optim)
        return q_t, v, info

    def _actor_loss(self, batch: ChunkBatch, a_pi, log_prob, alpha, q_t, v) -> tuple[torch.Tensor, Info]:
        """The ``actor_loss_type`` loss at the actor's sample ``a_pi`` (the module docstring's table)."""
        cfg, kind = self.cfg, self.cfg.actor_loss_type
        if kind == "sac":
            q_pi = self.critic(batch.obs, a_pi)
            if self.stochastic:
                actor_loss, info = sac_actor_loss(q_pi, log_prob, alpha)
                with torch.no_grad():  # diagnostic only: how well the actor still explains the data
                    info["bc_loss"] = self._weighted_likelihood(batch, torch.ones_like(batch.reward))[1]["bc_loss"]
                return actor_loss, info
            bc, bc_info = self.policy.bc_loss(batch.obs, batch.action, batch.valid_mask)
            return -q_pi.mean() + cfg.flow_bc_coef * bc, {
                "actor_q": q_pi.detach().mean(),
                "bc_loss": bc_info["bc_loss"],
            }
        if kind == "td3bc":
            q_pi = self.critic(batch.obs, a_pi).mean(dim=0)
            return td3bc_actor_loss(q_pi, a_pi, batch.action, batch.valid_mask, cfg.td3bc_alpha, cfg.td3bc_lam_form)
        if kind == "awr":
            with torch.no_grad():
                q_data = self.critic(batch.obs, batch.action).min(dim=0).values
                v_hat = self.critic(batch.obs, a_pi.detach()).min(dim=0).values
            weights, info = awr_weights(q_data - v_hat, cfg.awr_temperature, cfg.awr_max_weight)
            actor_loss, nll_info = self._weighted_likelihood(batch, weights)
            info.update(nll_info, actor_q=v_hat.mean())
            return actor_loss, info
        adv = q_t - v.detach()  # iql
        weights = iql_weights(adv, cfg.iql_beta, cfg.iql_max_weight)
        actor_loss, info = self._weighted_likelihood(batch, weights)
        info.update(iql_weights_mean=weights.mean(), iql_weights_max=weights.max(), iql_advantage_mean=adv.mean())
        return actor_loss, info

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        """Critic, then the IQL value net when used, then actor and temperature (the module docstring)."""
        cfg, kind = self.cfg, self.cfg.actor_loss_type
        alpha = self._alpha()
        metrics: dict[str, object] = prefixed("critic", self._critic_step(batch, alpha))
        q_t = v = None
        if kind == "iql":
            q_t, v, v_info = self._value_step(batch)
            metrics.update(prefixed("critic", v_info))
        if self.stochastic:
            a_pi, log_prob = self.policy.rsample_log_prob(batch.obs)
        else:
            a_pi, log_prob = self.policy.sample(batch.obs), None  # Euler flow from fresh noise, differentiable
        actor_loss, info = self._actor_loss(batch, a_pi, log_prob, alpha, q_t, v)
        if self.stochastic and kind != "sac" and cfg.entropy_bonus:
            bonus, bonus_info = entropy_bonus(log_prob, alpha)
            actor_loss = actor_loss + bonus
            info.update(bonus_info)
        if self.stochastic:
            info["entropy"] = -log_prob.detach().mean()
        info["actor_loss"] = actor_loss.detach()
        optimizer_step(actor_loss, self.actor_optim, self.actor_params)  # no gradient into the critics
        metrics.update(prefixed("actor", info))
        if self.stochastic:  # temperature: Gaussian actor, every loss type
            metrics.update(prefixed("alpha", self.temperature.step(log_prob)))
        self.num_updates += 1
        return metrics_to_floats(metrics)
