"""Flow Q-Learning (Park, Li, Levine, 2025) over action chunks (QC-FQL when H > 1, Li et al. 2025).

Three networks: a flow-matching BC policy ``f`` (the teacher, ``flow_steps`` Euler steps), a one-step policy
``mu(s, z)`` that maps noise straight to a chunk, and a critic ensemble ``Q_i`` over (s, flattened chunk). Both
actors live in one ``OneStepFlowPolicy`` (``self.policy``; ``policy.flow`` is ``f``, ``policy.actor`` is ``mu``), so
the deployable artifact -- the one-step actor -- is what the runner saves, evaluates and hands to a next stage, and
that file also carries the teacher FQL needs to continue (offline FQL -> online FQL). Starting points: a plain
``FlowPolicy`` (fresh, or from a BC/IQL stage) becomes the teacher of a fresh ``mu``; an ``OneStepFlowPolicy`` is
continued as it is (then ``actor_hidden_dims``/``actor_layernorm`` are ignored). Other policies: ``ConfigError``.

One update, all losses at the same parameters, then one optimiser step each (as the reference's single summed loss):

* critic:  ``L_Q = sum_i E[(Q_i(s, a) - y)^2]``,  ``y = r + bootstrap * agg_i Qtarget_i(s', a')``,
           ``a' = clip(mu(s', z'))``, ``z' ~ N(0, I)``; ``agg`` = mean (FQL's default) or min (``q_agg``);
           ``bootstrap = gamma^k (1 - terminated)`` carries the chunk discount (``ChunkBatch.bootstrap``).
* teacher: ``L_f = flow-matching loss of f on the dataset chunk`` (``FlowPolicy.bc_loss``; padded steps excluded).
* actor:   ``L_mu = alpha * E||mu(s, z) - f(s, z)||^2 - lam * E[mean_i Q_i(s, clip(mu(s, z)))]`` with ``f(s, z)`` the
           teacher's clipped Euler solution from the same ``z`` (no gradient) and ``lam = 1 / E|Q|`` (no gradient)
           when ``normalize_q_loss`` else 1 (``fql_actor_loss``). Only ``mu`` receives this gradient.

The distillation is over all H*A entries (the teacher's output has no padding); the mean over the ensemble in the
actor term and ``agg`` in the target follow the reference implementation. Target critics track the critics by
Polyak averaging (rate ``tau``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar, Literal

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig
from rlft.algos.losses import Info, metrics_to_floats, prefixed, td_loss, td_target
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import aggregate_q, soft_update
from rlft.policies.flow import FlowPolicy
from rlft.policies.onestep import OneStepFlowPolicy


def fql_actor_loss(
    q_pi: torch.Tensor, mu: torch.Tensor, flow_target: torch.Tensor, alpha: float, normalize_q_loss: bool = False
) -> tuple[torch.Tensor, Info]:
    """FQL's one-step actor loss (the BC flow term is separate):

        distill = mean_{b, h, a} (mu(s_b, z_b) - f(s_b, z_b))^2
        q       = mean_i Q_i(s_b, clip(mu(s_b, z_b)))            (per sample)
        lam     = 1 / mean_b |q_b|  (detached)  if normalize_q_loss else 1
        L       = alpha * distill - lam * mean_b q_b

    ``q_pi`` [N, B] (with grad through the action only), ``mu`` [B, H, A] (unclamped, with grad), ``flow_target``
    [B, H, A] (no grad). info: ``distill_loss``, ``q_loss`` (= -lam * mean q), ``actor_q`` (mean q), ``actor_lam``.
    """
    distill = (mu - flow_target).square().mean()
    q = q_pi.mean(dim=0)
    lam = 1.0 / q.detach().abs().mean().clamp_min(1e-6) if normalize_q_loss else torch.ones((), device=q.device)
    q_loss = -lam * q.mean()
    loss = alpha * distill + q_loss
    info = {"distill_loss": distill.detach(), "q_loss": q_loss.detach(), "actor_q": q.detach().mean(), "actor_lam": lam}
    return loss, info


@dataclasses.dataclass
class FQLConfig(CriticConfig):
    """Flow Q-learning (offline; the same losses run online). Critics: the reference uses 4 x 512 hidden widths."""

    alpha: float = 100.0
    """Weight of the distillation term (FQL's BC coefficient; task dependent). FQL's generic default is 10 and its
    OGBench cube runs use 300; QC-FQL's chunked default is 100, which we keep for H = 5 chunks."""
    normalize_q_loss: bool = False
    """Divide the actor's Q term by mean |Q| (no gradient), making alpha independent of the reward scale (the
    reference's option; off by default there)."""
    q_agg: Literal["mean", "min"] = "mean"
    """Aggregation of the target critics in the TD target: 'mean' (FQL's default) or 'min'."""
    actor_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the one-step actor mu(s, z) (GELU MLP), used when a new one is built."""
    actor_layernorm: bool = False
    """LayerNorm in the one-step actor (the reference's actor_layer_norm: off)."""
    flow_lr: float = 3e-4
    """Adam learning rate of the flow BC teacher."""
    actor_lr: float = 3e-4
    """Adam learning rate of the one-step actor."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise ConfigError(f"fql.alpha must be >= 0, got {self.alpha}")
        for name in ("flow_lr", "actor_lr", "critic_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"fql.{name} must be > 0, got {getattr(self, name)}")


@register
class FQL(Algorithm):
    """FQL: flow BC teacher, distilled one-step actor pushed up a critic ensemble; ``policy`` is the one-step actor."""

    Config: ClassVar[type[AlgoConfig]] = FQLConfig
    name: ClassVar[str] = "fql"
    supports_images: ClassVar[bool] = False  # its composite actor carries no image encoder yet
    supported_policies: ClassVar[tuple[str, ...]] = ("flow",)
    continues: ClassVar[tuple[type, ...]] = (OneStepFlowPolicy,)

    def __init__(self, cfg: FQLConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: FQLConfig = cfg
        if isinstance(self.policy, FlowPolicy):
            self.policy = OneStepFlowPolicy.from_flow(self.policy, tuple(cfg.actor_hidden_dims), cfg.actor_layernorm)
        elif not isinstance(self.policy, OneStepFlowPolicy):
            raise ConfigError(
                f"fql: needs a flow policy (policy.kind: flow) or an FQL one-step policy, got {type(self.policy).__name__}"
            )
        self.critic = self.critic_ensemble(act_horizon * action_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.flow_optim = torch.optim.Adam(self.policy.flow.parameters(), lr=cfg.flow_lr, fused=True)
        self.actor_optim = torch.optim.Adam(self.policy.actor.parameters(), lr=cfg.actor_lr, fused=True)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)
        self._policy_params = list(self.policy.flow.parameters()) + list(self.policy.actor.parameters())

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg, pi = self.cfg, self.policy

        # critic: TD regression on y = r + bootstrap * agg_i Qtarget_i(s', clip(mu(s', z')))
        with torch.no_grad():
            next_action = pi.sample(batch.next_obs)
            next_q = aggregate_q(self.target_critic(batch.next_obs, next_action), cfg.q_agg)
            y = td_target(batch.reward, batch.bootstrap, next_q)
        q = self.critic(batch.obs, batch.action)
        critic_loss, critic_info = td_loss(q, y)

        # teacher: flow matching on the dataset chunk
        bc_loss, bc_info = pi.flow.bc_loss(batch.obs, batch.action, batch.valid_mask)

        # one-step actor: distil the teacher's Euler solution from the same noise, climb the critic
        z = torch.randn_like(batch.action)
        with torch.no_grad():
            flow_target = pi.flow.sample(batch.obs, noise=z)  # the teacher's (clipped) solution from z
        mu = pi.onestep(batch.obs, z)
        q_pi = self.critic(batch.obs, mu.clamp(-1.0, 1.0))
        actor_loss, actor_info = fql_actor_loss(q_pi, mu, flow_target, cfg.alpha, cfg.normalize_q_loss)

        for opt in (self.critic_optim, self.flow_optim, self.actor_optim):
            opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        (bc_loss + actor_loss).backward(inputs=self._policy_params)  # no actor gradient into the critics
        for opt in (self.critic_optim, self.flow_optim, self.actor_optim):
            opt.step()
        soft_update(self.target_critic, self.critic, cfg.tau)
        self.num_updates += 1

        metrics: dict[str, object] = prefixed("critic", critic_info)
        metrics.update(prefixed("actor", bc_info))
        metrics.update(prefixed("actor", actor_info))
        metrics["actor/actor_loss"] = (bc_loss + actor_loss).detach()
        return metrics_to_floats(metrics)
