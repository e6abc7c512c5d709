"""Q-chunking (QC; Li, Zhou, Levine, 2025): a chunked critic and a flow BC policy with best-of-N extraction.

The critic values whole chunks, ``Q(s_t, a_{t:t+H})``, and backs up over the chunk: ``ChunkBatch.reward`` is the
discounted reward sum inside the chunk and ``bootstrap = gamma^k (1 - terminated)`` (k = H unless the episode ended
inside it) -- an unbiased H-step backup, since the chunk is executed open loop. The actor is the behaviour flow
policy trained by plain flow matching; the policy improvement happens at selection time:

* candidates:  ``a_j = f(s, z_j)``, ``z_j ~ N(0, I)``, j = 1..N (``num_samples``, QC: 32)
* selection:   ``a* = argmax_j agg_i Q_i(s, a_j)`` (``agg``: ``q_agg``, mean or min over the ensemble)

One update, all losses at the same parameters, then one optimiser step each:

* critic: ``L_Q = sum_i E[(Q_i(s, a) - y)^2]``, ``y = r + bootstrap * agg_i Qtarget_i(s', a'*)`` where ``a'*`` is the
          best-of-N chunk at ``s'`` scored by the current critics (as the reference implementation does);
* actor:  ``L_f = flow-matching loss on the dataset chunk`` (``FlowPolicy.bc_loss``, padded steps excluded).

``self.policy`` is a ``BestOfNPolicy`` holding the flow policy *and* the critic ensemble (``policy.flow``,
``policy.critic``) -- the deployable artifact needs the critic to choose -- so the runner saves, evaluates and hands
on the best-of-N actor; ``target_critic`` belongs to the algorithm. A plain ``FlowPolicy`` (fresh, or from a BC/IQL
flow stage) gets a fresh critic; a ``BestOfNPolicy`` (from a QC or DQC stage) is continued with its critic (the
``critic_*`` architecture fields are then ignored; ``num_samples``/``q_agg`` are applied to it).

Online (offline-to-online QC), exploration samples the best-of-N policy with fresh noise; ``explore_noise_scale``
scales all N candidates' start noise. Cost: every update integrates the flow N times per next state (N x flow_steps
velocity-net calls per row); ``num_samples`` is the knob.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig
from rlft.algos.losses import metrics_to_floats, prefixed, td_loss, td_target
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import aggregate_q, soft_update
from rlft.policies.best_of_n import BestOfNPolicy, best_of_n
from rlft.policies.flow import FlowPolicy


@dataclasses.dataclass
class QCConfig(CriticConfig):
    """Q-chunking with best-of-N policy extraction (offline and online). Critics: QC uses 2; the reference uses
    4 x 512 hidden widths."""

    num_samples: int = 32
    """N, flow samples per state for best-of-N (target next chunk and acting). QC uses 32."""
    q_agg: Literal["mean", "min"] = "mean"
    """Aggregation over the critic ensemble, for the TD target and for scoring candidates: 'mean' (QC's default) or
    'min'."""
    actor_lr: float = 3e-4
    """Adam learning rate of the flow policy."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1:
            raise ConfigError(f"qc.num_samples must be >= 1, got {self.num_samples}")
        for name in ("actor_lr", "critic_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"qc.{name} must be > 0, got {getattr(self, name)}")


def as_best_of_n(policy, cfg, who: str) -> BestOfNPolicy:
    """The ``BestOfNPolicy`` an algorithm trains: a plain flow policy gets a fresh critic ensemble sized by ``cfg``
    (``num_critics``, ``critic_hidden_dims``, ``critic_layernorm``, ``critic_impl``); a ``BestOfNPolicy`` is kept.
    Either way ``cfg.num_samples``/``cfg.q_agg`` are applied. Anything else: ``ConfigError``."""
    if isinstance(policy, BestOfNPolicy):
        p = policy
    elif isinstance(policy, FlowPolicy):
        p = BestOfNPolicy.from_flow(
            policy,
            num_critics=cfg.num_critics,
            critic_hidden_dims=tuple(cfg.critic_hidden_dims),
            critic_layernorm=cfg.critic_layernorm,
            critic_impl=cfg.critic_impl,
            num_samples=cfg.num_samples,
            q_agg=cfg.q_agg,
        )
    else:
        raise ConfigError(
            f"{who}: needs a flow policy (policy.kind: flow) or a best-of-N policy "
            f"from a QC/DQC stage, got {type(policy).__name__}"
        )
    p.set_selection(cfg.num_samples, cfg.q_agg)
    return p


@register
class QC(Algorithm):
    """QC: chunked twin critic with best-of-N targets, flow BC actor; ``policy`` is the best-of-N actor."""

    Config: ClassVar[type[AlgoConfig]] = QCConfig
    name: ClassVar[str] = "qc"
    supports_images: ClassVar[bool] = False  # its composite actor carries no image encoder yet
    supported_policies: ClassVar[tuple[str, ...]] = ("flow",)
    continues: ClassVar[tuple[type, ...]] = (BestOfNPolicy,)

    def __init__(self, cfg: QCConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: QCConfig = cfg
        self.policy: BestOfNPolicy = as_best_of_n(self.policy, cfg, "qc").to(self.device)
        self.target_critic = copy.deepcopy(self.policy.critic).requires_grad_(False)
        self.actor_optim = torch.optim.Adam(self.policy.flow.parameters(), lr=cfg.actor_lr, fused=True)
        self.critic_optim = torch.optim.Adam(self.policy.critic.parameters(), lr=cfg.critic_lr, fused=True)

    @torch.no_grad()
    def explore(self, obs_raw: Any) -> torch.Tensor:
        """Best-of-N with fresh noise; ``explore_noise_scale`` scales the start noise of all N candidates."""
        scale = self.cfg.explore_noise_scale
        if scale == 1.0:
            return self.policy.act(obs_raw, deterministic=False)
        single = np.ndim(obs_raw) == 1
        obs = np.asarray(obs_raw)[None] if single else np.asarray(obs_raw)
        noise = torch.randn(len(obs), self.cfg.num_samples, *self.policy.chunk_shape, device=self.device) * scale
        out = self.policy.act(obs, noise=noise, deterministic=False)
        return out[0] if single else out

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg, pi = self.cfg, self.policy
        B = batch.batch_size

        # critic: TD regression on y = r + bootstrap * agg_i Qtarget_i(s', best-of-N chunk at s')
        with torch.no_grad():
            z = torch.randn(B, cfg.num_samples, *pi.chunk_shape, device=batch.obs.device)
            cands = pi.candidates(batch.next_obs, z)
            next_action, _ = best_of_n(cands, pi.score(batch.next_obs, cands))
            next_q = aggregate_q(self.target_critic(batch.next_obs, next_action), cfg.q_agg)
            y = td_target(batch.reward, batch.bootstrap, next_q)
        q = pi.critic(batch.obs, batch.action)
        critic_loss, critic_info = td_loss(q, y)

        # actor: flow matching on the dataset chunk (behaviour cloning)
        bc_loss, bc_info = pi.flow.bc_loss(batch.obs, batch.action, batch.valid_mask)

        self.critic_optim.zero_grad(set_to_none=True)
        self.actor_optim.zero_grad(set_to_none=True)
        critic_loss.backward()
        bc_loss.backward()
        self.critic_optim.step()
        self.actor_optim.step()
        soft_update(self.target_critic, pi.critic, cfg.tau)
        self.num_updates += 1

        metrics: dict[str, object] = prefixed("critic", critic_info)
        metrics.update(prefixed("actor", bc_info))
        metrics["actor/actor_loss"] = bc_loss.detach()
        return metrics_to_floats(metrics)
