"""Conservative Q-Learning, CQL(H) (Kumar et al., 2020), on top of SAC, over action chunks.

One update:

* critic: ``L_Q = sum_i E[(Q_i(s, a) - y)^2] + alpha_cql * sum_i gap_i`` with the SAC target
  ``y = r + bootstrap * (min_i Qtarget_i(s', a') [- alpha * log pi(a'|s')])``, ``a' ~ pi(.|s')`` (the entropy term
  only with ``backup_entropy``; the reference code leaves it out) and the conservative gap

      gap_i = E_s[ T * logsumexp_j (c_ij / T) - Q_i(s, a_data) ]

  where the logsumexp runs over 3M importance-sampled chunks (M = ``cql_num_samples``; CQL(H)'s "version 3"):

      c = [ Q_i(s, u_m)  - log U(u_m),          u_m ~ Uniform([-1, 1]^(H*A)),  log U = -H*A*log 2
            Q_i(s, a_m)  - log pi(a_m|s),        a_m ~ pi(.|s)
            Q_i(s, a'_m) - log pi(a'_m|s') ]     a'_m ~ pi(.|s')  (next-state policy actions, scored at s)

  (T = ``cql_temperature``). This estimates log of the integral of exp(Q) over actions up to the constant log(3M),
  which, as in the reference code, is not subtracted (it only shifts the Lagrange threshold). Sampled actions and
  their log-probabilities carry no gradient; only the critics are pushed down on them and up on the data.
* Lagrange variant (``lagrange``): the penalty becomes ``alpha' * (alpha_cql * gap_i - threshold)`` and
  ``alpha' = exp(log alpha')`` (clipped to [0, 1e6]) is trained to *maximise* it, i.e. it rises while the weighted
  gap exceeds ``lagrange_threshold`` (the "target action gap") and falls otherwise.
* actor: SAC's ``L_pi = E[alpha * log pi(a|s) - min_i Q_i(s, a)]``, ``a ~ pi(.|s)`` reparameterised (CQL uses the
  min over its two critics); temperature: ``L_alpha = -log alpha * E[log pi(a|s) + H_target]``.

Target entropy: ``target_entropy`` if set, else ``target_entropy_per_dim * H * A`` (default -0.5 per dimension, not
SAC's -1: on long chunks the -dim target is unreachable for a narrow policy and drives a temperature explosion,
e.g. offline SAC on 8 x 7 = 56-dim chunks, docs/algorithms/sac_offline.md); logged as
``alpha/target_entropy``. CQL needs log pi for its importance weights and entropy terms, so it trains the Gaussian
policy only.

Cal-QL (``rlft.algos.calql``) is this algorithm with the policy-action Q values in the logsumexp lower-bounded by a
reference value; the hook is ``CQL.policy_q_lower_bound``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import ClassVar

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig, optimizer_step
from rlft.algos.losses import Info, metrics_to_floats, prefixed, sac_actor_loss, sac_critic_target, td_loss
from rlft.algos.temperature import Temperature
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import soft_update


# ---------------------------------------------------------------------------------------------------------------
# pure losses
# ---------------------------------------------------------------------------------------------------------------
def cql_gap(
    q_rand: torch.Tensor,
    q_pi: torch.Tensor,
    q_next_pi: torch.Tensor,
    log_prob_pi: torch.Tensor,
    log_prob_next_pi: torch.Tensor,
    q_data: torch.Tensor,
    log_density_rand: float,
    temperature: float = 1.0,
    lower_bound: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Info]:
    """CQL(H)'s importance-sampled gap per critic, ``gap_i = mean_b [T lse_j(c_ibj / T) - Q_i(s_b, a_b)]`` -> [N].

    ``q_rand``, ``q_pi``, ``q_next_pi`` [N, B, M]: critic values at uniform chunks, at pi(.|s) samples and at
    pi(.|s') samples (all scored at s); ``log_prob_pi``, ``log_prob_next_pi`` [B, M] their log-densities (no grad);
    ``q_data`` [N, B]; ``log_density_rand`` = log of the uniform density (-D log 2 for D chunk dimensions).
    ``lower_bound`` [B] (Cal-QL): the policy-action values are replaced by ``max(Q, lower_bound)`` *before* the
    importance correction (as the reference implementation does); ``-inf`` rows are left unbounded.

    info: ``cql_gap`` (mean over critics), ``cql_lse_mean``, ``cql_q_rand_mean``, ``cql_q_pi_mean`` (policy-action
    values, before any bound) and, with a bound, ``calql_bound_rate`` (fraction of policy-action values raised).
    """
    info: Info = {"cql_q_rand_mean": q_rand.detach().mean(), "cql_q_pi_mean": q_pi.detach().mean()}
    if lower_bound is not None:
        lb = lower_bound.reshape(1, -1, 1).to(q_pi)
        with torch.no_grad():
            info["calql_bound_rate"] = torch.cat([(q_pi < lb), (q_next_pi < lb)], -1).float().mean()
        q_pi, q_next_pi = torch.maximum(q_pi, lb), torch.maximum(q_next_pi, lb)
    cat = torch.cat(
        [q_rand - log_density_rand, q_next_pi - log_prob_next_pi.unsqueeze(0), q_pi - log_prob_pi.unsqueeze(0)], -1
    )
    lse = temperature * torch.logsumexp(cat / temperature, dim=-1)  # [N, B]
    gap = (lse - q_data).mean(dim=1)  # [N]
    info.update({"cql_gap": gap.detach().mean(), "cql_lse_mean": lse.detach().mean()})
    return gap, info


def cql_penalty(
    gap: torch.Tensor, cql_alpha: float, alpha_prime: torch.Tensor | None = None, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Critic penalty from the per-critic gaps [N], summed over critics (like ``td_loss``):

    * fixed weight:  ``sum_i alpha_cql * gap_i``
    * Lagrange:      ``sum_i alpha' * (alpha_cql * gap_i - threshold)`` (alpha' detached here), and the multiplier's
                     loss ``-mean_i alpha' * (alpha_cql * gap_i - threshold)`` (gaps detached): minimising it raises
                     alpha' while the weighted gap exceeds the threshold.

    Returns ``(penalty, alpha_prime_loss or None)``.
    """
    if alpha_prime is None:
        return cql_alpha * gap.sum(), None
    excess = cql_alpha * gap - threshold
    return (alpha_prime.detach() * excess).sum(), -(alpha_prime * excess.detach()).mean()


# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CQLConfig(CriticConfig):
    """CQL(H) with SAC (offline). Critics: min over the target copies in the TD target, min over the ensemble in
    the actor loss."""

    cql_alpha: float = 5.0
    """alpha_cql, the weight of the conservative gap (the reference code's min_q_weight; 5 for D4RL locomotion)."""
    cql_num_samples: int = 10
    """M, chunks sampled per state from each of the uniform, pi(.|s) and pi(.|s') proposals."""
    cql_temperature: float = 1.0
    """T of the logsumexp (1 in the paper)."""
    lagrange: bool = False
    """Tune the penalty's multiplier alpha' against ``lagrange_threshold`` (CQL's Lagrange variant)."""
    lagrange_threshold: float = 5.0
    """Target action gap tau of the Lagrange variant (the weighted gap alpha_cql * gap is held near it)."""
    init_lagrange_multiplier: float = 1.0
    """Initial alpha' of the Lagrange variant."""
    lagrange_lr: float = 3e-4
    """Adam learning rate of log(alpha')."""
    actor_lr: float = 1e-4
    """Adam learning rate of the policy (CQL: 1e-4)."""
    actor_warmup_steps: int = 0
    """Online: env steps, counted from the first update (``warmup_steps``), of critic-only updates: the actor and
    temperature stay frozen while the critics learn (from a pretrained or residual policy, so that a fresh critic does
    not drag it). In env steps, so it lasts as long at any utd_ratio."""
    temperature_lr: float = 3e-4
    """Adam learning rate of log(alpha)."""
    init_temperature: float = 0.1
    """Initial SAC temperature alpha. The log-density of a chunk sums H x A dimensions, so alpha * log pi outweighs Q
    differences of the reward's scale at alpha = 1 (the policy then stays spread over the whole box); 0.1, as in
    ``rlft.algos.sac``, lets the actor follow Q from the start (the contract test's bandit check)."""
    learn_temperature: bool = True
    """Tune alpha towards the target entropy (False: alpha stays at init_temperature)."""
    target_entropy: float | None = None
    """Target entropy in nats per chunk; None = target_entropy_per_dim * H * A."""
    target_entropy_per_dim: float = -0.5
    """Used when target_entropy is None (SAC's usual value is -1; see the module docstring)."""
    backup_entropy: bool = False
    """Subtract alpha * log pi(a'|s') in the TD target (the CQL reference code does not)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        where = self.algo_name
        if self.cql_alpha < 0:
            raise ConfigError(f"{where}.cql_alpha must be >= 0, got {self.cql_alpha}")
        if self.actor_warmup_steps < 0:
            raise ConfigError(f"{where}.actor_warmup_steps must be >= 0, got {self.actor_warmup_steps}")
        if self.cql_num_samples < 1:
            raise ConfigError(f"{where}.cql_num_samples must be >= 1, got {self.cql_num_samples}")
        if self.cql_temperature <= 0:
            raise ConfigError(f"{where}.cql_temperature must be > 0, got {self.cql_temperature}")
        if self.init_lagrange_multiplier <= 0:
            raise ConfigError(f"{where}.init_lagrange_multiplier must be > 0, got {self.init_lagrange_multiplier}")
        if self.init_temperature <= 0:
            raise ConfigError(f"{where}.init_temperature must be > 0, got {self.init_temperature}")


@register
class CQL(Algorithm):
    """CQL(H): SAC plus the importance-sampled conservative penalty (optionally Lagrange-tuned)."""

    Config: ClassVar[type[AlgoConfig]] = CQLConfig
    name: ClassVar[str] = "cql"
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian",)

    def __init__(self, cfg: CQLConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: CQLConfig = cfg
        if not getattr(self.policy, "has_log_prob", False):
            raise ConfigError(
                f"{self.name}: the policy ({type(self.policy).__name__}) has no tractable log-probability, which the "
                "importance-sampled penalty and the entropy terms need; use policy.kind: gaussian"
            )
        self.critic = self.critic_ensemble(act_horizon * action_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_params = list(self.policy.parameters())
        self.actor_optim = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr, fused=True)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)
        if cfg.lagrange:
            self.log_alpha_prime = torch.tensor(
                math.log(cfg.init_lagrange_multiplier), device=self.device, requires_grad=True
            )
            self.lagrange_optim = torch.optim.Adam([self.log_alpha_prime], lr=cfg.lagrange_lr, fused=True)
        dim = act_horizon * action_dim
        self.temperature = Temperature(
            cfg.init_temperature,
            cfg.temperature_lr,
            cfg.learn_temperature,
            cfg.target_entropy if cfg.target_entropy is not None else cfg.target_entropy_per_dim * dim,
            device=self.device,
        )
        self.log_density_rand = -dim * math.log(2.0)  # uniform over [-1, 1]^dim

    def policy_q_lower_bound(self, batch: ChunkBatch) -> torch.Tensor | None:
        """Lower bound [B] on the policy-action values inside the logsumexp; None for CQL (Cal-QL overrides)."""
        return None

    def _conservative_gap(self, batch: ChunkBatch, q_data: torch.Tensor) -> tuple[torch.Tensor, Info]:
        B, M = batch.batch_size, self.cfg.cql_num_samples
        with torch.no_grad():
            obs_rep = batch.obs.repeat_interleave(M, dim=0)  # row b*M + m: sample m of state b
            a_pi, logp_pi = self.policy.rsample_log_prob(obs_rep)
            a_next, logp_next = self.policy.rsample_log_prob(batch.next_obs.repeat_interleave(M, dim=0))
            a_rand = torch.rand_like(a_pi) * 2.0 - 1.0
        # one critic pass over all 3*B*M (state, chunk) pairs
        q = self.critic(obs_rep.repeat(3, 1), torch.cat([a_rand, a_pi, a_next], 0))
        q_rand, q_pi, q_next = q.reshape(q.shape[0], 3, B, M).unbind(1)
        return cql_gap(
            q_rand,
            q_pi,
            q_next,
            logp_pi.reshape(B, M),
            logp_next.reshape(B, M),
            q_data,
            self.log_density_rand,
            self.cfg.cql_temperature,
            self.policy_q_lower_bound(batch),
        )

    def _actor_step(self, batch: ChunkBatch, alpha) -> dict[str, object]:
        """SAC's actor and temperature steps, with the min over the critics."""
        action, log_prob = self.policy.rsample_log_prob(batch.obs)
        q_pi = self.critic(batch.obs, action).min(dim=0, keepdim=True).values
        actor_loss, actor_info = sac_actor_loss(q_pi, log_prob, alpha)
        optimizer_step(actor_loss, self.actor_optim, self.actor_params)  # no gradient into the critics
        return {**prefixed("actor", actor_info), **prefixed("alpha", self.temperature.step(log_prob))}

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg = self.cfg
        alpha = self.temperature.alpha
        metrics: dict[str, object] = {}

        # ---- critic: TD + conservative penalty ----
        with torch.no_grad():
            a_next, logp_next = self.policy.rsample_log_prob(batch.next_obs)
            y = sac_critic_target(
                self.target_critic(batch.next_obs, a_next),
                logp_next,
                batch.reward,
                batch.bootstrap,
                alpha if cfg.backup_entropy else 0.0,
            )
        q_data = self.critic(batch.obs, batch.action)
        td, td_info = td_loss(q_data, y)
        gap, gap_info = self._conservative_gap(batch, q_data)
        alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6) if cfg.lagrange else None
        penalty, alpha_prime_loss = cql_penalty(gap, cfg.cql_alpha, alpha_prime, cfg.lagrange_threshold)
        critic_loss = td + penalty
        optimizer_step(critic_loss, self.critic_optim)
        soft_update(self.target_critic, self.critic, cfg.tau)
        if alpha_prime_loss is not None:
            optimizer_step(alpha_prime_loss, self.lagrange_optim)
            metrics["critic/cql_alpha_loss"] = alpha_prime_loss.detach()
        metrics.update(prefixed("critic", td_info))
        metrics.update(prefixed("critic", gap_info))
        metrics["critic/td_loss"] = td.detach()
        metrics["critic/critic_loss"] = critic_loss.detach()
        metrics["critic/cql_penalty"] = penalty.detach()
        # effective weight on the gap (a tensor on the batch's device with Lagrange, else a plain number)
        metrics["critic/cql_alpha"] = cfg.cql_alpha * alpha_prime.detach() if alpha_prime is not None else cfg.cql_alpha

        if not self.actor_frozen(cfg.actor_warmup_steps):
            metrics.update(self._actor_step(batch, alpha))
        self.num_updates += 1
        return metrics_to_floats(metrics)
