"""Implicit Q-Learning (Kostrikov et al., 2022) over action chunks.

Three losses, all evaluated at the current parameters of one update (as in OGBench's IQL), then one optimiser step
each:

* value:  ``L_V = E[L_tau(min_i Qtarget_i(s, a) - V(s))]``            expectile regression (``expectile_loss``)
* critic: ``L_Q = sum_i E[(Q_i(s, a) - (r + bootstrap * V(s')))^2]``   (``td_loss``; bootstrap = gamma^k (1 - term))
* actor:  ``L_pi = E[w * bc_loss(s, a)]``, ``w = min(exp(beta * A), max_weight)``, ``A = min_i Qtarget_i(s, a) - V(s)``

The actor term is ``policy.bc_loss`` with per-sample weights, so IQL works with every policy: advantage-weighted
NLL for the Gaussian policy, advantage-weighted flow matching for the flow policy. Only dataset actions are ever
evaluated by the critics (no policy samples), which is what keeps IQL in-distribution offline.

Target critics follow the critics by Polyak averaging with rate ``tau``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig, optimizer_step
from rlft.algos.losses import iql_value_loss, iql_weights, metrics_to_floats, prefixed, td_loss, td_target
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import soft_update


@dataclasses.dataclass
class IQLConfig(CriticConfig):
    """Implicit Q-Learning (offline; also usable online with the same losses). Critics: the value target and the
    advantage use the min over the target copies (updated after every update); the widths apply to V too."""

    expectile: float = 0.7
    """Expectile tau of the value regression, in (0, 1). 0.7 is the IQL paper's locomotion/kitchen value; 0.9 (used
    by the paper for AntMaze and by OGBench's IQL for manipulation) makes V closer to a max over dataset actions."""
    beta: float = 3.0
    """Inverse temperature of the advantage weights exp(beta * A) (IQL paper: 3 locomotion, 10 AntMaze)."""
    max_weight: float = 100.0
    """Upper clip of the advantage weights."""
    actor_lr: float = 3e-4
    """Adam learning rate of the policy."""
    value_lr: float = 3e-4
    """Adam learning rate of the V network."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"iql.expectile must be in (0, 1), got {self.expectile}")
        if self.max_weight <= 0:
            raise ConfigError(f"iql.max_weight must be > 0, got {self.max_weight}")


@register
class IQL(Algorithm):
    """IQL with a Q ensemble (min of N target copies), a V network and an advantage-weighted BC actor."""

    Config: ClassVar[type[AlgoConfig]] = IQLConfig
    name: ClassVar[str] = "iql"
    encoder_training: ClassVar[str] = "critic"  # camera observations: DrQ (rlft.algos.base.Algorithm.featurize)
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian", "flow", "shortcut", "consistency", "diffusion")

    def __init__(self, cfg: IQLConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: IQLConfig = cfg
        self.critic = self.critic_ensemble(act_horizon * action_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = self.value_net()
        self.actor_optim = torch.optim.Adam(self.policy.parameters(), lr=cfg.actor_lr, fused=True)
        self.critic_optim = torch.optim.Adam(
            [*self.critic.parameters(), *self.encoder_parameters()], lr=cfg.critic_lr, fused=True
        )
        self.value_optim = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr, fused=True)

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg = self.cfg
        with torch.no_grad():
            q_target_min = self.target_critic(batch.obs, batch.action).min(dim=0).values
            next_v = self.value(batch.next_obs)
            y = td_target(batch.reward, batch.bootstrap, next_v)

        # value: expectile regression of V(s) on min_i Qtarget_i(s, a)
        obs_d = batch.obs.detach()  # camera features: only the critic's loss trains the encoder (DrQ)
        v = self.value(obs_d)
        v_loss, v_info = iql_value_loss(q_target_min, v, cfg.expectile)
        optimizer_step(v_loss, self.value_optim)

        # critic: TD regression on y = r + bootstrap * V(s')
        q = self.critic(batch.obs, batch.action)
        q_loss, q_info = td_loss(q, y)
        optimizer_step(q_loss, self.critic_optim)

        # actor: advantage-weighted BC loss of the policy
        adv = q_target_min - v.detach()
        weights = iql_weights(adv, cfg.beta, cfg.max_weight)
        pi_loss, pi_info = self.policy.bc_loss(obs_d, batch.action, batch.valid_mask, weights=weights)
        optimizer_step(pi_loss, self.actor_optim)

        soft_update(self.target_critic, self.critic, cfg.tau)
        self.num_updates += 1

        metrics: dict[str, object] = prefixed("actor", pi_info)  # the policy's own (unweighted) bc_loss etc.
        metrics.update(prefixed("critic", v_info))
        metrics.update(prefixed("critic", q_info))
        metrics.update(
            {
                "actor/actor_loss": pi_loss.detach(),
                "actor/iql_weights_mean": weights.mean(),
                "actor/iql_weights_max": weights.max(),
                "actor/iql_advantage_mean": adv.mean(),
            }
        )
        return metrics_to_floats(metrics)
