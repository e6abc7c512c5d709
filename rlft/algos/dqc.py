"""Decoupled Q-chunking (DQC; Li, Park, Levine, 2025): a long-chunk critic for the backup, a short-chunk policy.

A chunked critic over a long *backup horizon* Hb (e.g. 25 steps) propagates value fast (an unbiased Hb-step
backup), but a policy that must emit 25 actions open loop is hard to learn and not reactive. DQC keeps the policy's
chunk at H (e.g. 5) and bridges the two with a distilled *action critic* over the policy's chunk that is optimistic
about the Hb - H actions that follow it:

* chunk critic ``Q^c_i(s_t, a_{t:t+Hb})``:  ``L_c = sum_i E[(Q^c_i - y)^2]``, ``y = R + bootstrap * V(s')`` with
  ``R`` the discounted reward of the (up to) Hb executed steps and ``bootstrap = gamma^k (1 - terminated)``
  (``ChunkBatch`` built with ``data_horizon = Hb``);
* action critic ``Q^a_i(s_t, a_{t:t+H})``:   ``L_a = sum_i E[m * L_kd(Q^c_i(s, a_{t:t+Hb}) - Q^a_i(s, a_{t:t+H}))]``,
  an upper expectile (``kappa_d`` > 0.5) of the long-chunk value over the data's continuations of the short chunk --
  an implicit max over the remaining actions (``dqc_distill_loss``; member i regresses on member i, no gradient
  into ``Q^c``);
* value ``V(s_t)``:                           ``L_V = E[m * L_kb(agg_i Qtarget^a_i(s, a_{t:t+H}) - V(s))]``, an
  implicit max over the policy's chunk (``dqc_value_loss``; ``backup_loss`` 'expectile' or the reference's
  'quantile' alternative);
* actor: flow matching on ``a_{t:t+H}`` (padded steps excluded); best-of-N over ``Q^a`` at inference.

``L_kappa(u) = |kappa - 1[u < 0]| u^2``. ``m = valid_mask[:, H-1]`` drops the rows whose *policy* chunk runs past
the episode's end from the two distillation losses, as the reference does (their short chunk is padding). All losses
are evaluated at the same parameters, then each network takes one Adam step; only ``Q^a`` has a target copy
(Polyak ``tau``), as in the reference.

Rewards here are the env's own (OGBench singletask: -1 per step, 0 at success), so the critics regress values
directly; the reference's goal-conditioned 0/1 values use a sigmoid + BCE form of the same losses.

Data: ``DQCConfig.data_horizon`` returns Hb, so the runner samples Hb-step chunks; the policy sees their first H
steps. Offline only: online replay stores the executed H-step chunks (the runner refuses online mode).

``self.policy`` is a ``BestOfNPolicy`` whose critic is ``Q^a`` (the deployable artifact, as for QC); the chunk
critic, V and the target action critic belong to the algorithm.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar, Literal

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig, optimizer_step
from rlft.algos.losses import Info, expectile_loss, metrics_to_floats, prefixed, td_loss, td_target
from rlft.algos.qc import QC, as_best_of_n
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError, TrainingError
from rlft.nets.ensemble import aggregate_q, soft_update
from rlft.policies.best_of_n import BestOfNPolicy


def dqc_distill_loss(
    q_action: torch.Tensor, q_chunk: torch.Tensor, kappa: float, row_mask: torch.Tensor
) -> tuple[torch.Tensor, Info]:
    """Distillation of the action critic from the chunk critic by expectile regression:

        L = sum_i mean_b m_b * L_kappa(Q^c_i(s_b, a_{t:t+Hb}) - Q^a_i(s_b, a_{t:t+H}))

    ``q_action`` [N, B] (with grad), ``q_chunk`` [N, B] (no grad), ``row_mask`` [B] of 0/1 (masked rows count in the
    batch mean with zero loss, as in the reference). info: ``distill_loss``, ``action_q_mean``.
    """
    diff = (q_chunk - q_action) * row_mask  # a 0/1 mask zeroes both the residual and its loss
    loss = q_action.shape[0] * expectile_loss(diff, kappa)  # expectile_loss averages over members and batch
    return loss, {"distill_loss": loss.detach(), "action_q_mean": q_action.detach().mean()}


def dqc_value_loss(
    q_target: torch.Tensor, v: torch.Tensor, kappa: float, row_mask: torch.Tensor, kind: str = "expectile"
) -> tuple[torch.Tensor, Info]:
    """Implicit value backup over the policy's chunk, ``u = agg_i Qtarget^a_i(s_b, a_{t:t+H}) - V(s_b)``:

        expectile:  L = mean_b m_b |kappa - 1[u_b < 0]| u_b^2
        quantile:   L = mean_b m_b |kappa - 1[u_b < 0]| |u_b|

    ``q_target`` [B] (no grad), ``v`` [B] (with grad), ``row_mask`` [B] of 0/1. info: ``value_loss``, ``v_mean``.
    """
    u = (q_target - v) * row_mask
    if kind == "expectile":
        loss = expectile_loss(u, kappa)
    elif kind == "quantile":
        loss = (torch.where(u < 0, 1.0 - kappa, kappa) * u.abs()).mean()
    else:
        raise ConfigError(f"dqc.backup_loss must be 'expectile' or 'quantile', got {kind!r}")
    return loss, {"value_loss": loss.detach(), "v_mean": v.detach().mean()}


@dataclasses.dataclass
class DQCConfig(CriticConfig):
    """Decoupled Q-chunking (offline). The critic fields apply to the chunk critic and the action critic ensembles
    (``critic_lr`` to both, widths also to V; the reference uses 4 x 1024); ``tau`` moves the target action critic."""

    backup_horizon: int = 25
    """Hb, the chunk critic's horizon (>= env.act_horizon, the policy's chunk H). DQC's main setting: 25 with H = 5."""
    kappa_d: float = 0.8
    """Expectile of the action critic's distillation from the chunk critic, in (0, 1); > 0.5 is optimistic about
    the remaining Hb - H actions (DQC's cube setting: 0.8)."""
    kappa_b: float = 0.9
    """Expectile (or quantile) of the value backup V(s) <- Q^a(s, a_{t:t+H}), in (0, 1) (DQC's cube setting: 0.93
    with its quantile loss)."""
    backup_loss: Literal["expectile", "quantile"] = "expectile"
    """Loss of the value backup: 'expectile' (squared, IQL-style) or 'quantile' (absolute; the reference's choice)."""
    num_samples: int = 32
    """N, flow samples per state for best-of-N acting with the action critic (DQC: 32)."""
    q_agg: Literal["mean", "min"] = "mean"
    """Aggregation over the action-critic ensemble for the value target and best-of-N: 'mean' (the reference's
    default) or 'min' (its cube setting)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the flow policy."""
    value_lr: float = 3e-4
    """Adam learning rate of V."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backup_horizon < 1:
            raise ConfigError(f"dqc.backup_horizon must be >= 1, got {self.backup_horizon}")
        for name in ("kappa_d", "kappa_b"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"dqc.{name} must be in (0, 1), got {getattr(self, name)}")
        if self.num_samples < 1:
            raise ConfigError(f"dqc.num_samples must be >= 1, got {self.num_samples}")

    def data_horizon(self, act_horizon: int) -> int:
        """The chunk critic's backup horizon Hb: training chunks hold Hb actions (the policy uses the first H)."""
        if self.backup_horizon < act_horizon:
            raise ConfigError(f"dqc.backup_horizon ({self.backup_horizon}) must be >= env.act_horizon ({act_horizon})")
        return self.backup_horizon


@register
class DQC(Algorithm):
    """DQC: Hb-step chunk critic, distilled H-step action critic, V; flow BC actor with best-of-N over Q^a."""

    Config: ClassVar[type[AlgoConfig]] = DQCConfig
    name: ClassVar[str] = "dqc"
    supports_images: ClassVar[bool] = False  # its composite actor carries no image encoder yet
    supported_policies: ClassVar[tuple[str, ...]] = ("flow",)
    continues: ClassVar[tuple[type, ...]] = (BestOfNPolicy,)
    explore = QC.explore  # best-of-N with scaled candidate noise (DQC itself trains offline only)

    def __init__(self, cfg: DQCConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: DQCConfig = cfg
        self.backup_horizon = cfg.data_horizon(act_horizon)
        self.policy: BestOfNPolicy = as_best_of_n(self.policy, cfg, "dqc").to(self.device)
        self.chunk_critic = self.critic_ensemble(self.backup_horizon * action_dim)
        self.value = self.value_net()
        self.target_action_critic = copy.deepcopy(self.policy.critic).requires_grad_(False)
        self.actor_optim = torch.optim.Adam(self.policy.flow.parameters(), lr=cfg.actor_lr, fused=True)
        self.action_critic_optim = torch.optim.Adam(self.policy.critic.parameters(), lr=cfg.critic_lr, fused=True)
        self.chunk_critic_optim = torch.optim.Adam(self.chunk_critic.parameters(), lr=cfg.critic_lr, fused=True)
        self.value_optim = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr, fused=True)

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg, pi, H = self.cfg, self.policy, self.act_horizon
        if batch.action.shape[1] != self.backup_horizon:
            raise TrainingError(
                f"dqc: batches must hold backup_horizon={self.backup_horizon} actions per chunk "
                f"(DQCConfig.data_horizon), got {batch.action.shape[1]}"
            )
        action_h, mask_h = batch.action[:, :H], batch.valid_mask[:, :H]  # the policy's chunk
        row_mask = batch.valid_mask[:, H - 1]  # its last step executed: the short chunk is real data

        with torch.no_grad():
            y = td_target(batch.reward, batch.bootstrap, self.value(batch.next_obs))
            q_a_target = aggregate_q(self.target_action_critic(batch.obs, action_h), cfg.q_agg)

        # chunk critic: Hb-step TD regression on V(s')
        q_chunk = self.chunk_critic(batch.obs, batch.action)
        chunk_loss, chunk_info = td_loss(q_chunk, y)
        # action critic: upper expectile of the chunk critic over the data's continuations of the short chunk
        q_action = pi.critic(batch.obs, action_h)
        distill_loss, distill_info = dqc_distill_loss(q_action, q_chunk.detach(), cfg.kappa_d, row_mask)
        # value: implicit max of the (target) action critic over the policy's chunk
        v = self.value(batch.obs)
        value_loss, value_info = dqc_value_loss(q_a_target, v, cfg.kappa_b, row_mask, cfg.backup_loss)
        # actor: flow matching on the policy's chunk
        bc_loss, bc_info = pi.flow.bc_loss(batch.obs, action_h, mask_h)

        optims = (self.chunk_critic_optim, self.action_critic_optim, self.value_optim, self.actor_optim)
        optimizer_step(chunk_loss + distill_loss + value_loss + bc_loss, optims)  # disjoint parameters: one backward
        soft_update(self.target_action_critic, pi.critic, cfg.tau)
        self.num_updates += 1

        metrics: dict[str, object] = prefixed("critic", chunk_info)
        metrics.update(prefixed("critic", distill_info))
        metrics.update(prefixed("critic", value_info))
        metrics["critic/advantage_mean"] = (q_a_target - v.detach()).mean()
        metrics.update(prefixed("actor", bc_info))
        metrics["actor/actor_loss"] = bc_loss.detach()
        return metrics_to_floats(metrics)
