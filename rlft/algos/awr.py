"""Advantage-Weighted Regression (Peng et al., 2019), offline, over action chunks.

AWR fits a state value V(s) to returns of the data and regresses the policy onto the data's actions, each weighted
by its exponentiated advantage. No Q function is learnt and no policy action is ever evaluated, so AWR stays on the
data. One update:

* value:  ``L_V = E[(V(s) - R)^2]`` with the return target ``R`` either

      'td':  R = r + bootstrap * Vtarget(s')      (the chunk's discounted reward sum plus a bootstrapped tail;
                                                   bootstrap = gamma^k (1 - terminated), k the steps of the chunk)
      'mc':  R = mc_return                        (the Monte-Carlo return-to-go of the data, ``ChunkBatch.mc_return``;
                                                   rows where it is unknown (-inf, e.g. online replay) use 'td')

  AWR's TD(lambda) return interpolates between these two (lambda = 0.95 in the paper); with chunked data 'td' is
  already a k-step return. ``Vtarget`` is a Polyak copy of V (rate ``tau``; ``tau = 1`` bootstraps from the current
  V, as the paper's batch-style algorithm does between its value iterations).
* actor:  ``L_pi = E[w * bc_loss(s, a)]``,  ``w = min(exp(A / temperature), max_weight)``,  ``A = R - V(s)``
  (V before this update's step; weights carry no gradient). ``bc_loss`` is the policy's own: the NLL per valid
  chunk dimension for the Gaussian policy, the flow-matching loss for the flow policy, both masked by
  ``valid_mask``; so AWR trains every policy kind.

Paper defaults: temperature (beta) 1.0, max weight 20. Advantages here are in the scale of the returns (e.g. per-step
reward -1 and gamma 0.99 give values in [-100, 0]), so the temperature sets how sharply better-than-average chunks
are preferred; the logged ``actor/awr_advantage_mean`` and ``awr_weights_mean/max`` show whether the weights are
informative (advantages near 0 give near-uniform weights, i.e. plain BC).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar, Literal

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, optimizer_step
from rlft.algos.losses import Info, iql_weights, metrics_to_floats, prefixed, td_target
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import ValueNet, soft_update


# ---------------------------------------------------------------------------------------------------------------
# pure losses
# ---------------------------------------------------------------------------------------------------------------
def awr_return_target(
    reward: torch.Tensor, bootstrap: torch.Tensor, next_v: torch.Tensor, mc_return: torch.Tensor, kind: str
) -> torch.Tensor:
    """Value target ``R`` [B]: 'td' -> ``r + bootstrap * V(s')``; 'mc' -> ``mc_return`` where finite, else the 'td'
    value (all [B], no grad)."""
    td = td_target(reward, bootstrap, next_v)
    if kind == "td":
        return td
    return torch.where(torch.isfinite(mc_return), mc_return, td)


def awr_value_loss(v: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Info]:
    """``L_V = mean_b (V(s_b) - R_b)^2``. info: ``value_loss``, ``v_mean``, ``td_target_mean`` (mean R)."""
    loss = (v - target).square().mean()
    return loss, {"value_loss": loss.detach(), "v_mean": v.detach().mean(), "td_target_mean": target.mean()}


def awr_weights(adv: torch.Tensor, temperature: float, max_weight: float) -> tuple[torch.Tensor, Info]:
    """AWR weights ``w = min(exp(A / temperature), max_weight)`` [B] (overflow-safe, see ``iql_weights``).

    info: ``awr_weights_mean``, ``awr_weights_max``, ``awr_advantage_mean``.
    """
    w = iql_weights(adv.detach(), 1.0 / temperature, max_weight)
    return w, {"awr_weights_mean": w.mean(), "awr_weights_max": w.max(), "awr_advantage_mean": adv.detach().mean()}


# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class AWRConfig(AlgoConfig):
    """Advantage-Weighted Regression (offline)."""

    temperature: float = 1.0
    """beta in w = exp(A / beta) (paper: 1.0); smaller = sharper preference for high-advantage chunks."""
    max_weight: float = 20.0
    """Upper clip of the weights (paper: 20)."""
    value_target: Literal["td", "mc"] = "td"
    """'td' (r + bootstrap * Vtarget(s'), a k-step return over the chunk) or 'mc' (the data's Monte-Carlo
    return-to-go, ``ChunkBatch.mc_return``; rows without one fall back to 'td')."""
    value_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the V network."""
    value_layernorm: bool = True
    """LayerNorm after each hidden layer of the V network."""
    actor_lr: float = 3e-4
    """Adam learning rate of the policy."""
    value_lr: float = 3e-4
    """Adam learning rate of the V network."""
    tau: float = 0.005
    """Polyak rate of the target V network used in the 'td' target (1 = bootstrap from the current V)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ConfigError(f"awr.temperature must be > 0, got {self.temperature}")
        if self.max_weight <= 0:
            raise ConfigError(f"awr.max_weight must be > 0, got {self.max_weight}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"awr.tau must be in (0, 1], got {self.tau}")


@register
class AWR(Algorithm):
    """AWR: V regression on returns, exp-advantage-weighted ``policy.bc_loss``."""

    Config: ClassVar[type[AlgoConfig]] = AWRConfig
    name: ClassVar[str] = "awr"
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian", "flow")

    def __init__(self, cfg: AWRConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: AWRConfig = cfg
        self.value = ValueNet(obs_dim, tuple(cfg.value_hidden_dims), cfg.value_layernorm).to(self.device)
        self.target_value = copy.deepcopy(self.value).requires_grad_(False)
        self.actor_optim = torch.optim.Adam(self.policy.parameters(), lr=cfg.actor_lr, fused=True)
        self.value_optim = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr, fused=True)

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg = self.cfg
        with torch.no_grad():
            target = awr_return_target(
                batch.reward, batch.bootstrap, self.target_value(batch.next_obs), batch.mc_return, cfg.value_target
            )

        # value regression (the advantage uses V before this step)
        v = self.value(batch.obs)
        v_loss, v_info = awr_value_loss(v, target)
        optimizer_step(v_loss, self.value_optim)
        soft_update(self.target_value, self.value, cfg.tau)

        # actor: exp-advantage-weighted behaviour cloning
        weights, w_info = awr_weights(target - v.detach(), cfg.temperature, cfg.max_weight)
        pi_loss, pi_info = self.policy.bc_loss(batch.obs, batch.action, batch.valid_mask, weights=weights)
        optimizer_step(pi_loss, self.actor_optim)
        self.num_updates += 1

        metrics: dict[str, object] = prefixed("actor", pi_info)  # the policy's own (unweighted) bc_loss etc.
        metrics.update(prefixed("actor", w_info))
        metrics["actor/actor_loss"] = pi_loss.detach()
        metrics.update(prefixed("critic", v_info))
        return metrics_to_floats(metrics)
