"""Soft Actor-Critic over action chunks, with RLPD's choices (Ball et al., 2023) as defaults.

One update:

* critic:      ``L_Q = sum_i E[(Q_i(s, a) - y)^2]``,
               ``y = r + bootstrap * (min_{i in I} Qtarget_i(s', a') - alpha * log pi(a'|s'))``, ``a' ~ pi(s')``,
               ``I`` a random subset of ``critic_subset`` of the ``num_critics`` target critics (RLPD: 2 of 10; with
               ``critic_subset == num_critics`` it is the plain min of SAC). ``bootstrap = gamma^k (1 - terminated)``
               carries the chunk discount (``ChunkBatch.bootstrap``); gamma is therefore not a field here.
* actor:       ``L_pi = E[alpha * log pi(a|s) - agg_i Q_i(s, a)] + bc_coef * bc_loss(s, a_data)
               + action_anchor * E||tanh(mu(s))||^2``, ``a ~ pi(s)`` reparameterised (only the policy's parameters
               receive this gradient; the last term is ``losses.action_anchor_loss``). ``agg`` (``actor_q_agg``) is
               the mean over all critics (RLPD) or their min (SAC, Haarnoja et al., 2018: the actor then climbs only
               where the critics agree, ``min = mean - |Q_1 - Q_2| / 2`` for two).
* temperature: ``L_alpha = -log_alpha * E[log pi(a|s) + H_target]`` (alpha rises while the entropy is below target).

The critic steps on every update; the actor and temperature on every ``actor_update_every``-th (default: once per
``utd_ratio`` updates, i.e. once per environment macro-step, as RLPD). Only the ``critic_subset`` sampled target
critics are evaluated for the target (2 forwards instead of 10). The subset ``I`` is drawn with the algorithm's own
CPU ``torch.Generator`` (seeded from torch's global RNG at construction and saved in ``state_dict``), so runs are
reproducible. Policy samples use torch's global RNG.

Target entropy. SAC's usual ``-dim(A)`` is ``-56`` for an 8x7 chunk, and a seed that used it saw the temperature
explode when fine-tuning. The mechanism, as we read it: a BC-pretrained tanh-Gaussian is much narrower than that
target asks (small learned stds; gripper dimensions saturated near +-1 lose ~2|u| nats each through the tanh
Jacobian), so its entropy sits far below ``-56``, and alpha grows until the entropy bonus swamps Q and destroys the
pretrained behaviour. The default rule (``target_entropy=None``) is therefore

    H_target = min(target_entropy_per_dim * H * A,  entropy of the starting policy)      [nats per chunk]

with ``target_entropy_per_dim = -0.5`` (the multiplier QC/FQL's chunked RLPD uses from scratch). The second term is
measured once, on the first update's batch (mean of -log pi over the batch's states), when
``target_entropy_from_policy``: no policy is ever asked to be more random than it starts, so alpha can fall but does
not run away at the start of fine-tuning; a wide policy still gets at most ``-0.5 * dim``. The value used is fixed
from then on, saved in ``state_dict`` and logged as ``alpha/target_entropy``. Set ``target_entropy`` to override.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, Literal

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig, optimizer_step
from rlft.algos.losses import (
    action_anchor_loss,
    metrics_to_floats,
    prefixed,
    sac_actor_loss,
    sac_critic_target,
    td_loss,
)
from rlft.algos.temperature import Temperature
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import soft_update


@dataclasses.dataclass
class SACConfig(CriticConfig):
    """SAC / RLPD for online fine-tuning (``critic_layernorm``: RLPD's key stabiliser with offline data; targets are
    updated after every critic step)."""

    utd_ratio: int = 4
    """Online: gradient updates per environment macro-step (chunk). RLPD uses 20; 4 keeps the update time per
    macro-step affordable on a CPU (update timings: scripts/bench_updates.py, docs/results.md#update-throughput)."""
    warmup_steps: int = 1000
    """Online: environment steps collected before updates start (the offline half of each batch is there from the
    start, so a short warm-up suffices)."""
    offline_ratio: float = 0.5
    """Online: fraction of each batch drawn from the offline dataset (RLPD's symmetric sampling: 0.5)."""
    num_critics: int = 10
    """Number of Q networks in the ensemble (RLPD: 10; SAC: 2)."""
    critic_subset: int = 2
    """Size of the random subset of target critics whose minimum forms the TD target (RLPD: 2; = num_critics gives
    SAC's plain min over all critics)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the policy."""
    temperature_lr: float = 3e-4
    """Adam learning rate of log(alpha)."""
    init_temperature: float = 0.1
    """Initial alpha. Lower than RLPD's 1.0 from-scratch value: the log-density of a chunk sums H*A dimensions, so
    alpha * log pi is already large relative to Q at 0.1 when starting from a pretrained policy."""
    learn_temperature: bool = True
    """Tune alpha towards the target entropy (False: alpha stays at init_temperature)."""
    target_entropy: float | None = None
    """Explicit target entropy in nats per chunk; None = the rule in the module docstring."""
    target_entropy_per_dim: float = -0.5
    """Auto rule: target entropy per flattened chunk dimension (target = this * H * A, capped by the starting
    policy's entropy when target_entropy_from_policy)."""
    target_entropy_from_policy: bool = True
    """Auto rule: cap the target at the starting policy's entropy, measured on the first update's batch."""
    backup_entropy: bool = True
    """Include -alpha * log pi(a'|s') in the TD target (soft backup); False gives a plain min-Q backup."""
    actor_update_every: int | None = None
    """Update the actor and the temperature on every k-th update only (the critic on every update). None = utd_ratio:
    one actor step per environment macro-step, as RLPD does after its utd_ratio critic steps."""
    actor_warmup_steps: int = 0
    """Online: env steps, counted from the first update (``warmup_steps``), of critic-only updates: the actor and the
    temperature stay frozen while a fresh or warm-started critic adapts to the online data (without it a pretrained
    actor can be dragged by a random critic). In env steps, so it lasts as long at any utd_ratio."""
    bc_coef: float = 0.0
    """Weight of an added policy.bc_loss on the offline rows of the batch (``batch.is_offline``) in the actor loss
    (0 = off): an anchor to the demonstrations that never imitates the policy's own exploratory actions."""
    actor_q_agg: Literal["mean", "min"] = "mean"
    """How the actor's objective combines the critics' values of its actions: 'mean' over all critics (RLPD) or
    'min' (the original SAC's choice for two critics), which discounts actions the critics disagree on."""
    action_anchor: float = 0.0
    """Weight of the squared deterministic action, per step summed over action dimensions, in the actor loss (0 = off;
    ``losses.action_anchor_loss``). Under ``base_mode: residual`` it anchors the composite policy to its base: a
    correction must raise Q by more than ``action_anchor * ||delta||^2`` to be kept. Without a base policy it pulls
    actions towards the middle of the action box, which is rarely wanted."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.critic_subset <= self.num_critics:
            raise ConfigError(
                f"sac.critic_subset must be in [1, num_critics={self.num_critics}], got {self.critic_subset}"
            )
        if self.init_temperature <= 0:
            raise ConfigError(f"sac.init_temperature must be > 0, got {self.init_temperature}")
        if self.actor_warmup_steps < 0:
            raise ConfigError(f"sac.actor_warmup_steps must be >= 0, got {self.actor_warmup_steps}")
        if self.action_anchor < 0:
            raise ConfigError(f"sac.action_anchor must be >= 0, got {self.action_anchor}")
        if self.actor_update_every is not None and self.actor_update_every < 1:
            raise ConfigError(f"sac.actor_update_every must be >= 1, got {self.actor_update_every}")


@register
class SAC(Algorithm):
    """SAC / RLPD: critic ensemble with random-subset min targets, tanh-Gaussian actor, learned temperature."""

    Config: ClassVar[type[AlgoConfig]] = SACConfig
    name: ClassVar[str] = "sac"
    encoder_training: ClassVar[str] = "critic"  # camera observations: DrQ (rlft.algos.base.Algorithm.featurize)
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian",)

    def __init__(self, cfg: SACConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: SACConfig = cfg
        if not getattr(self.policy, "has_log_prob", False):
            raise ConfigError(
                f"sac: the policy ({type(self.policy).__name__}) has no tractable log-probability, which SAC's "
                "entropy terms need; use policy.kind: gaussian (a flow policy can be fine-tuned with DSRL, which runs "
                "SAC on its noise space)"
            )
        self.critic = self.critic_ensemble(act_horizon * action_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_params = list(self.policy.parameters())
        self.actor_optim = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr, fused=True)
        self.critic_optim = torch.optim.Adam(
            [*self.critic.parameters(), *self.encoder_parameters()], lr=cfg.critic_lr, fused=True
        )
        auto = cfg.target_entropy is None  # the rule in the module docstring
        self.temperature = Temperature(
            cfg.init_temperature,
            cfg.temperature_lr,
            cfg.learn_temperature,
            cfg.target_entropy_per_dim * act_horizon * action_dim if auto else cfg.target_entropy,
            cap_at_first_policy=auto and cfg.target_entropy_from_policy,
            device=self.device,
        )
        self.generator = torch.Generator()  # on the CPU: the subset indices are host-side (no device sync)
        self.generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        self.actor_update_every = cfg.actor_update_every or max(1, cfg.utd_ratio)

    def _subset(self) -> torch.Tensor | None:
        n, k = self.cfg.num_critics, self.cfg.critic_subset
        if k == n:
            return None
        return torch.randperm(n, generator=self.generator)[:k]

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg = self.cfg
        alpha = self.temperature.alpha
        metrics: dict[str, object] = {}

        # ---- critic ----
        with torch.no_grad():
            next_action, next_log_prob = self.policy.rsample_log_prob(batch.next_obs)
            # evaluate only the sampled subset of target critics: [k, B] (k = critic_subset)
            next_q = self.target_critic(batch.next_obs, next_action, members=self._subset())
            y = sac_critic_target(
                next_q, next_log_prob, batch.reward, batch.bootstrap, alpha if cfg.backup_entropy else 0.0
            )
        q = self.critic(batch.obs, batch.action)
        critic_loss, critic_info = td_loss(q, y)
        optimizer_step(critic_loss, self.critic_optim)
        soft_update(self.target_critic, self.critic, cfg.tau)
        metrics.update(prefixed("critic", critic_info))

        # ---- actor and temperature (every actor_update_every updates) ----
        if not self.actor_frozen(cfg.actor_warmup_steps) and self.num_updates % self.actor_update_every == 0:
            obs = batch.obs.detach()  # camera features: only the critic's loss trains the encoder (DrQ)
            action, log_prob = self.policy.rsample_log_prob(obs)
            q_pi = self.critic(obs, action)
            actor_loss, actor_info = sac_actor_loss(q_pi, log_prob, alpha, cfg.actor_q_agg)
            if cfg.bc_coef > 0 or cfg.action_anchor > 0:
                actor_loss = actor_loss + self._anchors(obs, batch, metrics)
                actor_info["actor_loss"] = actor_loss.detach()
            optimizer_step(actor_loss, self.actor_optim, self.actor_params)  # no gradient into the critics
            metrics.update(prefixed("actor", actor_info))

            metrics.update(prefixed("alpha", self.temperature.step(log_prob)))

        self.num_updates += 1
        return metrics_to_floats(metrics)

    def _anchors(self, obs: torch.Tensor, batch: ChunkBatch, metrics: dict[str, object]) -> torch.Tensor:
        """The actor loss's optional anchors: BC on the offline rows (``bc_coef``; never imitating the policy's own
        exploration) and the pull of the deterministic action towards zero (``action_anchor``)."""
        cfg, total = self.cfg, torch.zeros((), device=obs.device)
        if cfg.bc_coef > 0:
            weights = batch.is_offline / batch.is_offline.mean().clamp_min(1e-6)
            bc, _ = self.policy.bc_loss(obs, batch.action, batch.valid_mask, weights=weights)
            total = total + cfg.bc_coef * bc
            metrics["actor/bc_loss"] = bc.detach()
        if cfg.action_anchor > 0:
            anchor, info = action_anchor_loss(self.policy.sample(obs, deterministic=True))
            total = total + cfg.action_anchor * anchor
            metrics.update(prefixed("actor", info))
        return total

    # ---- persistence: add the subset generator ----
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["generator"] = self.generator.get_state()
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        super().load_state_dict(sd)
        self.generator.set_state(sd["generator"])
