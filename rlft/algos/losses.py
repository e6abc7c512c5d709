"""Pure loss functions shared by the algorithms (no modules, no optimisers, no hidden randomness).

Shapes: ``B`` batch, ``N`` ensemble members. Critic outputs are ``[N, B]`` (see ``rlft.nets.ensemble``). Every
``(loss, info)`` function returns ``info`` as a dict of *detached 0-d tensors* (not floats), so an update can gather
all its metrics and move them to the host with one synchronisation at the end (see ``metrics_to_floats``).

TD convention (``rlft.data.batch``): ``y = reward + bootstrap * V(next_obs)`` with ``reward`` the discounted reward
sum inside the chunk and ``bootstrap = gamma^k * (1 - terminated)`` (``ChunkBatch.bootstrap``).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from rlft.nets.ensemble import aggregate_q

Info = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------
def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Asymmetric squared loss of IQL, averaged over all elements:

        L_tau(u) = |tau - 1[u < 0]| * u^2,   u = diff = Q(s, a) - V(s).

    Positive residuals (Q above V) weigh ``tau``, negative ones ``1 - tau``. Minimising ``E[L_tau(Q - V)]`` over V
    gives the tau-expectile of Q(s, a) under the data's actions: tau = 0.5 is the mean (SARSA-like value of the
    behaviour policy), tau -> 1 approaches the max over in-support actions.
    """
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff.square()).mean()


def iql_weights(adv: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """Advantage weights of AWR/IQL: ``w = min(exp(beta * A), max_weight)``.

    Computed as ``exp(min(beta * A, log max_weight))`` so a large advantage never overflows to inf. ``adv`` must be
    detached (weights carry no gradient).
    """
    return torch.exp((beta * adv).clamp(max=math.log(max_weight)))


def td_loss(q: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Info]:
    """Ensemble TD regression: ``L = sum_i mean_b (Q_i(s_b, a_b) - y_b)^2``.

    ``q`` [N, B] (with grad), ``target`` y [B] (no grad). Summing over members gives each member the gradient of a
    single critic's MSE, independent of N.

    info: ``critic_loss``; ``q_mean`` (over members and batch); ``q_std`` (std across members, population form,
    averaged over the batch); ``td_error`` (mean |y - Q_i|); ``td_target_mean``.
    """
    diff = q - target.unsqueeze(0)
    loss = diff.square().mean(dim=1).sum()
    with torch.no_grad():
        info = {
            "critic_loss": loss.detach(),
            "q_mean": q.mean(),
            "q_std": q.std(dim=0, correction=0).mean(),
            "td_error": diff.abs().mean(),
            "td_target_mean": target.mean(),
        }
    return loss, info


def td_target(reward: torch.Tensor, bootstrap: torch.Tensor, next_value: torch.Tensor) -> torch.Tensor:
    """The TD target of every critic here: ``y = r + bootstrap * next_value`` with ``bootstrap = gamma^k (1 -
    terminated)`` (``ChunkBatch.bootstrap``: the chunk's discount, 0 at a terminal). ``next_value`` is what the
    algorithm backs up: IQL's V(s'), a (subset) min or mean of target critics at the policy's next action, SAC's
    soft value; all [B]. Call under ``torch.no_grad``."""
    return reward + bootstrap * next_value


# ---------------------------------------------------------------------------------------------------------------
# IQL
# ---------------------------------------------------------------------------------------------------------------
def iql_value_loss(q_target_min: torch.Tensor, v: torch.Tensor, tau: float) -> tuple[torch.Tensor, Info]:
    """IQL value loss: ``L_V = mean_b L_tau(min_i Qtarget_i(s_b, a_b) - V(s_b))`` (see ``expectile_loss``).

    ``q_target_min`` [B] (no grad), ``v`` [B] (with grad). info: ``value_loss``, ``v_mean``.
    """
    loss = expectile_loss(q_target_min - v, tau)
    return loss, {"value_loss": loss.detach(), "v_mean": v.detach().mean()}


# ---------------------------------------------------------------------------------------------------------------
# SAC / RLPD
# ---------------------------------------------------------------------------------------------------------------
def sac_critic_target(
    next_q: torch.Tensor,
    next_log_prob: torch.Tensor,
    reward: torch.Tensor,
    bootstrap: torch.Tensor,
    alpha: torch.Tensor | float,
    subset_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft TD target with a (random-subset) ensemble minimum, as in SAC (N = 2) and RLPD (2 of 10):

        y = r + bootstrap * (min_{i in I} Qtarget_i(s', a') - alpha * log pi(a'|s')),   a' ~ pi(.|s')

    ``next_q`` [N, B] target-critic values at (s', a'); ``next_log_prob`` [B]; ``reward``, ``bootstrap`` [B];
    ``subset_idx`` the member indices I (None = all members: plain min). Pass ``alpha = 0`` to drop the entropy
    term from the backup (``backup_entropy=False``). Returns y [B] (call under ``torch.no_grad``).
    """
    q = next_q if subset_idx is None else next_q.index_select(0, subset_idx)
    soft_v = q.min(dim=0).values - alpha * next_log_prob
    return td_target(reward, bootstrap, soft_v)


def sac_actor_loss(
    q_pi: torch.Tensor, log_prob: torch.Tensor, alpha: torch.Tensor | float, agg: str = "mean"
) -> tuple[torch.Tensor, Info]:
    """SAC actor loss ``L_pi = mean_b (alpha * log pi(a_b|s_b) - agg_i Q_i(s_b, a_b))``, ``a_b ~ pi(.|s_b)`` (rsample).

    ``q_pi`` [N, B]; ``agg`` the aggregation over members: 'mean' (RLPD) or 'min' (SAC, Haarnoja et al., 2018; for two
    critics ``min = mean - |Q_1 - Q_2| / 2``, so the actor discounts actions they disagree on); ``log_prob`` [B];
    ``alpha`` detached. info: ``actor_loss``, ``actor_q`` (batch mean of the aggregated Q of the policy's actions),
    ``entropy`` (-mean log pi, nats per chunk).
    """
    q_agg = aggregate_q(q_pi, agg)
    loss = (alpha * log_prob - q_agg).mean()
    with torch.no_grad():
        info = {"actor_loss": loss.detach(), "actor_q": q_agg.mean(), "entropy": -log_prob.mean()}
    return loss, info


def action_anchor_loss(mean_action: torch.Tensor) -> tuple[torch.Tensor, Info]:
    """Pull of the actor's deterministic action towards zero: ``L = mean_{b,h} sum_j a_bhj^2``, ``a = tanh(mu(s))``.

    ``mean_action`` [B, H, A], in the actor's normalised action space. Under ``base_mode: residual`` the actor's action
    is the correction delta of ``a_env = a_base + bound * delta``, so ``L = mean ||(a_env - a_base) / bound||^2``: TD3+BC's
    behaviour anchor (Fujimoto & Gu, 2021) with the frozen base policy as the behaviour policy. It acts on the mean
    only; the exploration width stays with the entropy term. info: ``action_anchor`` (the loss).
    """
    loss = mean_action.pow(2).sum(dim=-1).mean()
    return loss, {"action_anchor": loss.detach()}


def temperature_loss(
    log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float
) -> tuple[torch.Tensor, Info]:
    """Temperature (entropy coefficient) loss ``L_alpha = -log_alpha * mean_b (log pi(a_b|s_b) + H_target)``.

    ``log_prob`` is detached. dL/dlog_alpha = entropy - H_target with entropy = -mean log pi, so gradient descent
    raises alpha when the policy's entropy is below the target and lowers it when above.
    info: ``temperature_loss``, ``temperature`` (alpha before the step), ``target_entropy``.
    """
    gap = (log_prob.detach() + target_entropy).mean()
    loss = -log_alpha * gap
    with torch.no_grad():
        info = {
            "temperature_loss": loss.detach(),
            "temperature": log_alpha.detach().exp(),
            "target_entropy": torch.as_tensor(float(target_entropy), device=log_alpha.device),
        }
    return loss, info


# ---------------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------------
def prefixed(prefix: str, info: Mapping[str, object]) -> dict[str, object]:
    """``{'q_mean': x}`` -> ``{'critic/q_mean': x}`` (keys already containing '/' are kept as they are)."""
    return {(k if "/" in k else f"{prefix}/{k}"): v for k, v in info.items()}


def metrics_to_floats(metrics: Mapping[str, object]) -> dict[str, float]:
    """Convert a dict of 0-d tensors / numbers to floats with a single device->host transfer for all tensors."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    out = {k: float(v) for k, v in metrics.items() if not torch.is_tensor(v)}  # type: ignore[arg-type]
    if keys:
        stacked = torch.stack([metrics[k].detach().float().reshape(()) for k in keys])  # type: ignore[union-attr]
        values = stacked.cpu().tolist()
        out.update(zip(keys, values))
    return {k: out[k] for k in metrics}
