"""Advantage-Weighted Actor-Critic (Nair et al., 2020) over action chunks.

One update:

* critic: ``L_Q = sum_i E[(Q_i(s, a) - y)^2]``,
          ``y = r + bootstrap * (min_i Qtarget_i(s', a') - entropy_coef * log pi(a'|s'))``, ``a' ~ pi(.|s')``
  (a SAC-style critic evaluated at the policy's next actions; AWAC uses no entropy term: ``entropy_coef = 0``).
* actor:  ``L_pi = -E[w(s, a) * log pi(a|s)]`` on the *dataset's* actions, with

      A(s, a) = min_i Q_i(s, a) - V(s),     V(s) = (1/M) sum_m min_i Q_i(s, a_m),  a_m ~ pi(.|s)
      w = B * softmax_batch(A / lambda)   ('softmax', the reference implementation's batch normalisation)
        or exp(A / lambda)                ('exp', the paper's unnormalised form)
      then clipped at ``max_weight``.

  ``log pi`` is the policy's own ``bc_loss`` with these weights: the Gaussian's NLL per valid chunk dimension (a
  constant rescaling of the chunk log-likelihood, masked by ``valid_mask``), or -- for the flow policy, which has no
  tractable density -- the weighted flow-matching loss, its usual likelihood surrogate. Policy samples for V and the
  target only need ``policy.sample``, so both kinds work; ``entropy_coef > 0`` needs a Gaussian policy.

Target critics follow by Polyak averaging (``tau``). Logged: ``actor/awr_weights_mean``/``max``,
``actor/awr_advantage_mean``, the critic's TD statistics.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import ClassVar, Literal

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig, optimizer_step
from rlft.algos.losses import Info, metrics_to_floats, prefixed, sac_critic_target, td_loss
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import soft_update


# ---------------------------------------------------------------------------------------------------------------
# pure losses
# ---------------------------------------------------------------------------------------------------------------
def awac_weights(adv: torch.Tensor, lam: float, max_weight: float, normalize: str) -> tuple[torch.Tensor, Info]:
    """AWAC weights [B] from advantages ``adv`` [B] (detached).

    'softmax': ``w_b = B * exp(A_b / lam) / sum_c exp(A_c / lam)`` (mean weight 1 before clipping);
    'exp':     ``w_b = exp(A_b / lam)`` (computed as exp(min(A / lam, log max_weight)) so it never overflows).
    Both are then clipped at ``max_weight``. info: ``awr_weights_mean``, ``awr_weights_max``, ``awr_advantage_mean``.
    """
    a = adv.detach() / lam
    if normalize == "softmax":
        w = torch.softmax(a, dim=0) * a.shape[0]
    else:
        w = torch.exp(a.clamp(max=math.log(max_weight)))
    w = w.clamp(max=max_weight)
    return w, {"awr_weights_mean": w.mean(), "awr_weights_max": w.max(), "awr_advantage_mean": adv.detach().mean()}


def awac_advantage(q_data: torch.Tensor, q_pi: torch.Tensor) -> torch.Tensor:
    """``A = min_i Q_i(s, a) - mean_m min_i Q_i(s, a_m)``; ``q_data`` [N, B], ``q_pi`` [N, B, M] -> [B]."""
    return q_data.min(dim=0).values - q_pi.min(dim=0).values.mean(dim=-1)


# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class AWACConfig(CriticConfig):
    """AWAC (offline pre-training; the same losses run online). Critics: the min over the ensemble forms the target
    and the advantage; targets are updated after every update."""

    lam: float = 1.0
    """lambda, the temperature of exp(A / lambda) (the paper's Lagrange multiplier; rlkit uses 0.3 to 2)."""
    weight_normalization: Literal["softmax", "exp"] = "softmax"
    """'softmax' (weights normalised over the batch to mean 1, as the reference code) or 'exp' (raw exp(A/lambda))."""
    max_weight: float = 100.0
    """Upper clip of the weights (after normalisation)."""
    num_value_samples: int = 1
    """M, policy samples per state for V(s) = E_{a~pi} Q(s, a) (the reference code uses 1)."""
    entropy_coef: float = 0.0
    """Fixed coefficient of -log pi(a'|s') in the TD target (AWAC: 0; > 0 needs a Gaussian policy)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the policy."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lam <= 0:
            raise ConfigError(f"awac.lam must be > 0, got {self.lam}")
        if self.max_weight <= 0:
            raise ConfigError(f"awac.max_weight must be > 0, got {self.max_weight}")
        if self.num_value_samples < 1:
            raise ConfigError(f"awac.num_value_samples must be >= 1, got {self.num_value_samples}")
        if self.entropy_coef < 0:
            raise ConfigError(f"awac.entropy_coef must be >= 0, got {self.entropy_coef}")


@register
class AWAC(Algorithm):
    """AWAC: policy-action TD critic, advantage-weighted likelihood of the dataset's actions."""

    Config: ClassVar[type[AlgoConfig]] = AWACConfig
    name: ClassVar[str] = "awac"
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian", "flow")

    def __init__(self, cfg: AWACConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: AWACConfig = cfg
        if cfg.entropy_coef > 0 and not getattr(self.policy, "has_log_prob", False):
            raise ConfigError(
                f"awac.entropy_coef={cfg.entropy_coef} needs log pi(a'|s'), which {type(self.policy).__name__} does "
                "not have; use entropy_coef: 0 (AWAC's default) or policy.kind: gaussian"
            )
        self.critic = self.critic_ensemble(act_horizon * action_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optim = torch.optim.Adam(self.policy.parameters(), lr=cfg.actor_lr, fused=True)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)

    def _next_action(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        if self.cfg.entropy_coef > 0:
            return self.policy.rsample_log_prob(next_obs)
        return self.policy.sample(next_obs), 0.0

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg = self.cfg
        B, M = batch.batch_size, cfg.num_value_samples

        # ---- critic ----
        with torch.no_grad():
            a_next, logp_next = self._next_action(batch.next_obs)
            y = sac_critic_target(
                self.target_critic(batch.next_obs, a_next), logp_next, batch.reward, batch.bootstrap, cfg.entropy_coef
            )
        q = self.critic(batch.obs, batch.action)
        critic_loss, critic_info = td_loss(q, y)
        optimizer_step(critic_loss, self.critic_optim)
        soft_update(self.target_critic, self.critic, cfg.tau)

        # ---- actor: A = Q(s, a_data) - E_{a~pi} Q(s, a), with the critic after its step ----
        with torch.no_grad():
            obs_rep = batch.obs.repeat_interleave(M, dim=0)  # [B*M, O], sample m of state b at row b*M + m
            q_pi = self.critic(obs_rep, self.policy.sample(obs_rep)).reshape(-1, B, M)
            adv = awac_advantage(self.critic(batch.obs, batch.action), q_pi)
        weights, w_info = awac_weights(adv, cfg.lam, cfg.max_weight, cfg.weight_normalization)
        pi_loss, pi_info = self.policy.bc_loss(batch.obs, batch.action, batch.valid_mask, weights=weights)
        optimizer_step(pi_loss, self.actor_optim)
        self.num_updates += 1

        metrics: dict[str, object] = prefixed("critic", critic_info)
        metrics.update(prefixed("actor", pi_info))  # the policy's own (unweighted) bc_loss, entropy, ...
        metrics.update(prefixed("actor", w_info))
        metrics["actor/actor_loss"] = pi_loss.detach()
        metrics["actor/actor_q"] = q_pi.mean()
        return metrics_to_floats(metrics)
