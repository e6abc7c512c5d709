"""On-policy DSRL: PPO with GAE over chunk macro-steps -- in a frozen flow policy's noise space when the run sets
``TrainConfig.base_policy`` (DSRL's on-policy variant, Wagenmaker et al. 2025, "Steering Your Diffusion Policy with
Latent Space RL"; the off-policy one is DSRL-SAC, ``rlft.algos.sac`` on the noise-action env).

Like DSRL-SAC, nothing here knows about the base policy: the noise-action env decodes the latent chunk w the actor
samples, so the transitions the loop hands over are ordinary macro-steps whose action is w. The online loop runs
on-policy because ``rollout_steps > 0`` (``AlgoConfig.rollout_steps``): it collects that many macro-steps with the
current policy, calls ``update`` once with all of them in collection order, and discards them.

One update (rollout of T macro-steps, batch in collection order):

* values ``V(s_t)``, ``V(s'_t)`` and behaviour log-probs ``log pi_old(w_t|s_t)`` (the policy has not changed since it
  sampled the rollout) are computed once;
* SMDP GAE (``smdp_gae``), with k_t env steps in macro-step t:

      delta_t = R_t + gamma^k_t (1 - terminated_t) V(s'_t) - V(s_t)
      A_t     = delta_t + gamma^k_t * lambda * c_t * A_{t+1},      returns G_t = A_t + V(s_t)

  ``c_t = 1`` when macro-step t+1 continues the same episode (``next_obs_t == obs_{t+1}`` and not terminated), else 0
  -- a time limit or a reset cuts the recursion while ``delta_t`` still bootstraps through truncation;
* ``update_epochs`` passes over random minibatches of ``minibatch_size``:

      ratio = exp(log pi(w|s) - log pi_old(w|s))
      L = -mean(min(ratio A, clip(ratio, 1 - clip, 1 + clip) A))                          (``ppo_clip_loss``)
          + value_coef * mean((V(s) - G)^2) - entropy_coef * H + kl_prior_coef * KL(pi || N(0, I))

  with A normalised per minibatch (``normalize_advantage``), H the one-sample entropy estimate ``-log pi(w~pi)`` and
  KL the one-sample estimate of ``rlft.algos.dsrl_awmle.latent_kl_to_prior`` on the raw noise (the actor's
  normaliser maps its (-1, 1) output to the noise box). Log-probs are of the whole latent chunk: every latent
  dimension was chosen, even if the episode ended inside the chunk. Gradients are clipped to ``max_grad_norm``.

Logged: ``actor/actor_loss`` (clipped surrogate), ``actor/approx_kl`` (E[(ratio - 1) - log ratio]),
``actor/clip_frac``, ``actor/entropy``, ``actor/kl_loss``, ``actor/advantage_mean``, ``critic/value_loss``,
``critic/v_mean``, ``critic/return_mean``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, optimizer_step
from rlft.algos.dsrl_awmle import latent_kl_to_prior
from rlft.algos.losses import Info, metrics_to_floats
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import ValueNet

LOG_RATIO_MAX = 20.0
"""Clamp of log pi - log pi_old before exp in the PPO ratio."""


# ----------------------------------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------------------------------
def episode_continues(obs: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor) -> torch.Tensor:
    """``c_t`` [T]: 1 where row t+1 of an in-order rollout continues row t's episode (``next_obs_t == obs_{t+1}``
    exactly and row t did not terminate), 0 otherwise and for the last row."""
    c = torch.zeros_like(terminated)
    if obs.shape[0] > 1:
        same = (next_obs[:-1] == obs[1:]).all(dim=-1).to(c.dtype)
        c[:-1] = same * (1.0 - terminated[:-1])
    return c


def smdp_gae(
    reward: torch.Tensor,
    v: torch.Tensor,
    v_next: torch.Tensor,
    terminated: torch.Tensor,
    discount: torch.Tensor,
    continues: torch.Tensor,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over macro-steps (all [T], in collection order); see the module docstring. Returns ``(A, G = A + V)``."""
    delta = reward + discount * (1.0 - terminated) * v_next - v
    adv = torch.zeros_like(delta)
    running = torch.zeros((), dtype=delta.dtype, device=delta.device)
    for t in range(delta.shape[0] - 1, -1, -1):
        running = delta[t] + discount[t] * lam * continues[t] * running
        adv[t] = running
    return adv, adv + v


def ppo_clip_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip: float
) -> tuple[torch.Tensor, Info]:
    """PPO's clipped surrogate ``L = -mean(min(r A, clip(r, 1 - clip, 1 + clip) A))``, ``r = exp(logp - logp_old)``.

    info: ``actor_loss``, ``approx_kl`` (mean of (r - 1) - log r), ``clip_frac`` (fraction with |r - 1| > clip).
    ``log r`` is clamped to +-``LOG_RATIO_MAX`` (a far off-policy sample must not overflow exp; such a ratio is far
    outside the clip range either way).
    """
    log_ratio = (log_prob - old_log_prob.detach()).clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX)  # exp stays finite
    ratio = log_ratio.exp()
    loss = -torch.min(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv).mean()
    with torch.no_grad():
        info = {
            "actor_loss": loss.detach(),
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "clip_frac": ((ratio - 1.0).abs() > clip).float().mean(),
        }
    return loss, info


# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DSRLPPOConfig(AlgoConfig):
    """PPO (on-policy) over chunk macro-steps; DSRL's on-policy variant with a base policy."""

    rollout_steps: int = 256
    """Macro-steps collected with the current policy per update (the online loop is on-policy when > 0)."""
    update_epochs: int = 4
    """Passes over each rollout."""
    minibatch_size: int = 64
    """Minibatch size inside an epoch (capped at the rollout size)."""
    gae_lambda: float = 0.95
    """GAE lambda, per macro-step."""
    clip: float = 0.2
    """PPO ratio clip epsilon."""
    value_coef: float = 0.5
    """Weight of the value regression."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    kl_prior_coef: float = 1e-3
    """Weight of KL(pi || N(0, I)) on the raw latent noise (keeps the steering near the flow's prior)."""
    normalize_advantage: bool = True
    """Standardise advantages per minibatch."""
    lr: float = 3e-4
    """Adam learning rate of the actor and the value network."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip (actor and value together)."""
    value_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of V(s)."""
    value_layernorm: bool = True
    """LayerNorm in V(s)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rollout_steps < 1:
            raise ConfigError(f"dsrl_ppo.rollout_steps must be >= 1 (PPO is on-policy), got {self.rollout_steps}")
        if self.update_epochs < 1 or self.minibatch_size < 1:
            raise ConfigError("dsrl_ppo.update_epochs and dsrl_ppo.minibatch_size must be >= 1")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"dsrl_ppo.gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if not 0.0 < self.clip < 1.0:
            raise ConfigError(f"dsrl_ppo.clip must be in (0, 1), got {self.clip}")
        if self.lr <= 0 or self.max_grad_norm <= 0:
            raise ConfigError("dsrl_ppo.lr and dsrl_ppo.max_grad_norm must be > 0")
        if self.explore_noise_scale != 1.0:
            raise ConfigError(
                "dsrl_ppo.explore_noise_scale must be 1: PPO's ratios need actions sampled from pi itself"
            )


@register
class DSRLPPO(Algorithm):
    """PPO with SMDP GAE over macro-steps; the actor is a tanh Gaussian (over latent noise with a base policy)."""

    Config: ClassVar[type[AlgoConfig]] = DSRLPPOConfig
    name: ClassVar[str] = "dsrl_ppo"
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian",)

    def __init__(self, cfg: DSRLPPOConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: DSRLPPOConfig = cfg
        if not getattr(self.policy, "has_log_prob", False):
            raise ConfigError(
                f"dsrl_ppo: the actor ({type(self.policy).__name__}) needs a tractable log-probability; "
                "use policy.kind: gaussian"
            )
        self.value = ValueNet(obs_dim, tuple(cfg.value_hidden_dims), cfg.value_layernorm).to(self.device)
        self.params = list(self.policy.parameters()) + list(self.value.parameters())
        self.optim = torch.optim.Adam(self.params, lr=cfg.lr, fused=True)

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg, nz = self.cfg, self.policy.normalizer
        T = batch.batch_size
        with torch.no_grad():
            v, v_next = self.value(batch.obs), self.value(batch.next_obs)
            old_log_prob = self.policy.log_prob(batch.obs, batch.action)
            cont = episode_continues(batch.obs, batch.next_obs, batch.terminated)
            adv_all, ret_all = smdp_gae(batch.reward, v, v_next, batch.terminated, batch.discount, cont, cfg.gae_lambda)
        log_scale = torch.log(0.5 * (nz.act_high - nz.act_low)).sum() * self.act_horizon  # raw-noise Jacobian
        mb = min(cfg.minibatch_size, T)
        sums: dict[str, torch.Tensor] = {}
        n = 0
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(T, device=batch.obs.device)
            for start in range(0, T - mb + 1, mb):
                idx = perm[start : start + mb]
                obs, adv = batch.obs[idx], adv_all[idx]
                if cfg.normalize_advantage and mb > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                log_prob = self.policy.log_prob(obs, batch.action[idx])
                pi_loss, info = ppo_clip_loss(log_prob, old_log_prob[idx], adv, cfg.clip)
                value_loss = (self.value(obs) - ret_all[idx]).square().mean()
                w_n, logp_sample = self.policy.rsample_log_prob(obs)
                entropy = -logp_sample.mean()
                kl = latent_kl_to_prior(logp_sample - log_scale, nz.unnormalize_action(w_n)).mean()
                loss = pi_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy + cfg.kl_prior_coef * kl
                optimizer_step(loss, self.optim, max_grad_norm=cfg.max_grad_norm)
                step = {**info, "value_loss": value_loss.detach(), "entropy": entropy.detach(), "kl_loss": kl.detach()}
                for k, x in step.items():
                    sums[k] = sums.get(k, 0.0) + x
                n += 1
        avg = {k: x / n for k, x in sums.items()}
        self.num_updates += 1
        metrics: dict[str, object] = {
            "actor/actor_loss": avg["actor_loss"],
            "actor/approx_kl": avg["approx_kl"],
            "actor/clip_frac": avg["clip_frac"],
            "actor/entropy": avg["entropy"],
            "actor/kl_loss": avg["kl_loss"],
            "actor/advantage_mean": adv_all.mean(),
            "critic/value_loss": avg["value_loss"],
            "critic/v_mean": v.mean(),
            "critic/return_mean": ret_all.mean(),
        }
        return metrics_to_floats(metrics)
