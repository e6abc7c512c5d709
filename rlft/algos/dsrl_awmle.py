"""DSRL stage 1: offline advantage-weighted MLE (AW-MLE) warm start of the latent actor.

The base policy ``pi_dp(s, w)`` (a flow policy) and a critic ``Q_1..Q_N(s, a)`` pretrained offline (IQL's, loaded
through ``TrainConfig.init_critic``) are frozen. For every observation s of a dataset batch:

1. draw M candidates ``w_1..w_M ~ N(0, I)`` (the prior), clipped to the latent actor's noise box [-m, m] (the actor
   cannot represent noise outside it; clipping keeps scored and imitated candidates identical);
2. decode ``a_j = pi_dp(s, w_j)`` and score them with the ensemble: ``S_j = mean_i Q_i(s, a_j) + kappa * std_i Q_i(s, a_j)``
   (``ensemble_score``; kappa > 0 optimistic, a UCB-style "mean + kappa*std", kappa < 0 the pessimistic
   ``mean - |kappa| std``, 0 the plain mean);
3. baseline = tau-soft maximum over the candidates ``b = tau * log((1/M) sum_j exp(S_j / tau))`` (between the mean,
   tau -> inf, and the max, tau -> 0); advantage ``A_j = clip(S_j - b, -advantage_clip, advantage_clip)``;
4. self-normalised weights ``omega_j = exp(beta * A_j) / sum_l exp(beta * A_l)`` (``awmle_weights``). Because they are
   normalised per observation, the baseline changes them only through the clip; it matters for the logged advantage;
5. loss (``awmle_loss``):

       L = -mean_s sum_j omega_j log pi_W(w_j | s)  +  kl_coef * mean_s KL(pi_W(.|s) || N(0, I)),

   the KL estimated with one reparameterised sample ``w ~ pi_W``: ``log pi_W(w|s) - log N(w; 0, I)``, with the
   densities of the *raw* noise (``latent_kl_to_prior``; the tanh actor's density on [-m, m]).

Logged: ``actor/nll_loss``, ``actor/kl_loss``, ``actor/eff_num`` (1 / sum_j omega_j^2 per obs,
averaged; M for uniform weights, 1 for one winner), ``actor/corr_A_logprob`` (Pearson correlation over all (s, j)
of A_j and log pi_W(w_j|s): positive when the actor puts mass on high-advantage noise), ``critic/q_mean`` and
``critic/q_std`` (candidates' ensemble mean / spread), and the stage-1 check of the DSRL debugging checklist:
``actor/q_policy`` = E[Q(s, pi_dp(s, w))] for w ~ pi_W against ``actor/q_prior`` for w ~ prior (the candidates);
after stage 1 the first should exceed the second (``rlft dsrl-check``).

Cost: each update decodes B * M chunks (M flow integrations per observation), so on a CPU keep B * M small.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, optimizer_step
from rlft.algos.losses import Info, metrics_to_floats, prefixed
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------------------------------
def ensemble_score(q: torch.Tensor, kappa: float) -> torch.Tensor:
    """``S = mean_i q_i + kappa * std_i q_i`` over the ensemble axis 0 (population std); [N, ...] -> [...]."""
    return q.mean(dim=0) + kappa * q.std(dim=0, correction=0)


def soft_baseline(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """tau-soft maximum over the last axis: ``b = tau * (logsumexp(S / tau) - log M)``; [B, M] -> [B]."""
    M = scores.shape[-1]
    return tau * (torch.logsumexp(scores / tau, dim=-1) - math.log(M))


def awmle_weights(
    scores: torch.Tensor, tau: float, beta: float, advantage_clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = clip(S - soft_baseline(S, tau), +-advantage_clip)`` and ``omega = softmax_j(beta * A)``; both [B, M]."""
    adv = (scores - soft_baseline(scores, tau).unsqueeze(-1)).clamp(-advantage_clip, advantage_clip)
    return torch.softmax(beta * adv, dim=-1), adv


def latent_kl_to_prior(log_prob_w: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One-sample estimate of ``KL(pi_W || N(0, I))`` per observation: ``log pi_W(w|s) - log N(w; 0, I)``.

    ``log_prob_w`` [B] the actor's log-density of the *raw* noise sample w [B, ...] (reparameterised, so the estimate
    has a pathwise gradient). ``log N(w; 0, I) = sum_d (-w_d^2 / 2 - log sqrt(2 pi))``.
    """
    log_prior = (-0.5 * w.square() - _LOG_SQRT_2PI).flatten(1).sum(dim=1)
    return log_prob_w - log_prior


def pearson_corr(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of two flattened tensors (population moments; 0 when either is constant)."""
    x, y = x.reshape(-1), y.reshape(-1)
    xc, yc = x - x.mean(), y - y.mean()
    return (xc * yc).mean() / (xc.square().mean().sqrt() * yc.square().mean().sqrt() + eps)


def awmle_loss(
    log_probs: torch.Tensor, weights: torch.Tensor, kl: torch.Tensor, kl_coef: float, advantage: torch.Tensor
) -> tuple[torch.Tensor, Info]:
    """AW-MLE loss ``L = -mean_b sum_j omega_bj log pi(w_bj|s_b) + kl_coef * mean_b KL_b``.

    ``log_probs`` [B, M] (with grad), ``weights`` [B, M] (no grad, rows sum to 1), ``kl`` [B] (with grad),
    ``advantage`` [B, M] (for the logged correlation only). info: ``nll_loss``, ``kl_loss``, ``eff_num``
    (mean_b 1 / sum_j omega_bj^2), ``corr_A_logprob``, ``awmle_weights_max``, ``awmle_advantage_mean``.
    """
    w = weights.detach()
    nll = -(w * log_probs).sum(dim=-1).mean()
    kl_loss = kl.mean()
    loss = nll + kl_coef * kl_loss
    with torch.no_grad():
        info = {
            "nll_loss": nll.detach(),
            "kl_loss": kl_loss.detach(),
            "eff_num": (1.0 / w.square().sum(dim=-1)).mean(),
            "corr_A_logprob": pearson_corr(advantage, log_probs.detach()),
            "awmle_weights_max": w.max(),
            "awmle_advantage_mean": advantage.mean(),
        }
    return loss, info


# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DSRLAWMLEConfig(AlgoConfig):
    """DSRL stage 1 (offline): advantage-weighted MLE of the latent actor against a frozen pretrained critic."""

    num_candidates: int = 32
    """M: prior noise candidates per observation."""
    kappa: float = 1.0
    """Ensemble score ``mean + kappa * std`` of the candidates' Q values (negative = pessimistic)."""
    tau: float = 5.0
    """Temperature of the soft-maximum baseline over the candidates."""
    beta: float = 1.0
    """Inverse temperature of the candidate weights exp(beta * A)."""
    advantage_clip: float = 20.0
    """Advantages are clipped to +-this before weighting."""
    kl_coef: float = 1e-3
    """Weight of KL(pi_W || prior)."""
    lr: float = 1e-4
    """Adam learning rate of the latent actor."""
    num_critics: int = 2
    """Members of the frozen critic ensemble; must match the pretrained critic (IQL: 2)."""
    critic_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the frozen critic; must match the pretrained critic."""
    critic_layernorm: bool = True
    """LayerNorm in the frozen critic; must match the pretrained critic."""
    critic_impl: Literal["auto", "loop", "batched"] = "auto"
    """Critic ensemble implementation: 'loop', 'batched' or 'auto' (batched on CUDA, loop on CPU)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_candidates < 2:
            raise ConfigError(f"dsrl_awmle.num_candidates must be >= 2, got {self.num_candidates}")
        if self.tau <= 0:
            raise ConfigError(f"dsrl_awmle.tau must be > 0, got {self.tau}")
        if self.beta < 0:
            raise ConfigError(f"dsrl_awmle.beta must be >= 0, got {self.beta}")
        if self.advantage_clip <= 0:
            raise ConfigError(f"dsrl_awmle.advantage_clip must be > 0, got {self.advantage_clip}")
        if self.kl_coef < 0:
            raise ConfigError(f"dsrl_awmle.kl_coef must be >= 0, got {self.kl_coef}")
        if self.lr <= 0:
            raise ConfigError(f"dsrl_awmle.lr must be > 0, got {self.lr}")
        if self.num_critics < 1:
            raise ConfigError(f"dsrl_awmle.num_critics must be >= 1, got {self.num_critics}")


@register
class DSRLAWMLE(Algorithm):
    """AW-MLE warm start of DSRL's latent actor (offline); the base policy and the critic stay frozen."""

    Config: ClassVar[type[AlgoConfig]] = DSRLAWMLEConfig
    name: ClassVar[str] = "dsrl_awmle"
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian",)
    uses_base_policy: ClassVar[bool] = True
    needs_pretrained_critic: ClassVar[bool] = True

    def __init__(
        self,
        cfg: DSRLAWMLEConfig,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        policy=None,
        device="cpu",
        base_policy=None,
    ):
        if base_policy is None:
            raise ConfigError(
                "dsrl_awmle: needs the frozen base policy whose noise it steers (TrainConfig.base_policy)"
            )
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: DSRLAWMLEConfig = cfg
        if not getattr(self.policy, "has_log_prob", False):
            raise ConfigError(
                f"dsrl_awmle: the latent actor ({type(self.policy).__name__}) needs a tractable "
                "log-probability; use policy.kind: gaussian"
            )
        self.base_policy = base_policy.to(self.device).requires_grad_(False)
        noise = tuple(getattr(base_policy, "noise_shape", base_policy.chunk_shape))
        if noise != (act_horizon, action_dim):
            raise ConfigError(
                f"dsrl_awmle: the latent actor's chunk ({act_horizon}, {action_dim}) must equal the base "
                f"policy's noise shape {noise}"
            )
        # frozen scoring critic over env chunks; named `critic` so init_critic loads an offline stage's critic into it
        self.critic = self.critic_ensemble(base_policy.act_horizon * base_policy.action_dim).requires_grad_(False)
        self.actor_optim = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr, fused=True)

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg, nz = self.cfg, self.policy.normalizer
        obs = batch.obs
        B, M, (H, A) = obs.shape[0], cfg.num_candidates, (self.act_horizon, self.action_dim)
        obs_rep = obs.repeat_interleave(M, dim=0)  # [B*M, O], candidates of one obs are contiguous

        with torch.no_grad():
            # 1-2: prior candidates (clipped to the noise box), decoded and scored by the frozen ensemble
            w = torch.randn(B * M, H, A, device=obs.device)
            w = torch.maximum(torch.minimum(w, nz.act_high), nz.act_low)
            q = self.critic(obs_rep, self.base_policy.sample(obs_rep, noise=w)).reshape(-1, B, M)  # [N, B, M]
            scores = ensemble_score(q, cfg.kappa)
            # 3-4: soft-max baseline, advantages, self-normalised weights
            weights, adv = awmle_weights(scores, cfg.tau, cfg.beta, cfg.advantage_clip)

        # 5: weighted log-likelihood of the candidates (normalised latent) + KL to the prior (raw noise)
        log_probs = self.policy.log_prob(obs_rep, nz.normalize_action(w)).reshape(B, M)
        w_pi_n, log_prob_pi_n = self.policy.rsample_log_prob(obs)
        log_scale = torch.log(0.5 * (nz.act_high - nz.act_low)).sum() * H  # d w / d w_n = (high - low) / 2 per dim
        kl = latent_kl_to_prior(log_prob_pi_n - log_scale, nz.unnormalize_action(w_pi_n))
        loss, info = awmle_loss(log_probs, weights, kl, cfg.kl_coef, adv)
        optimizer_step(loss, self.actor_optim)

        with torch.no_grad():  # the stage-1 check: Q of the actor's noise vs the prior's
            q_pi = self.critic(obs, self.base_policy.sample(obs, noise=nz.unnormalize_action(w_pi_n.detach())))
        metrics: dict[str, object] = prefixed("actor", info)
        metrics.update(
            {
                "actor/actor_loss": loss.detach(),
                "actor/entropy": -log_prob_pi_n.detach().mean(),
                "actor/q_policy": q_pi.mean(),
                "actor/q_prior": q.mean(),
                "critic/q_mean": q.mean(),
                "critic/q_std": q.std(dim=0, correction=0).mean(),
            }
        )
        self.num_updates += 1
        return metrics_to_floats(metrics)

    def load_pretrained(self, sd: dict[str, Any]) -> list[str]:
        """Load the frozen critic (``critic``) from an offline stage's state; the base policy is never replaced.
        Raises ``CheckpointError`` if no critic matches (scoring with a random critic would be meaningless)."""
        from rlft.errors import CheckpointError

        loaded = super().load_pretrained({k: v for k, v in sd.items() if k != "base_policy"})
        if "critic" not in loaded:
            raise CheckpointError(
                "dsrl_awmle: the pretrained state has no critic matching num_critics/critic_hidden_dims/"
                f"critic_layernorm ({self.cfg.num_critics} x {tuple(self.cfg.critic_hidden_dims)})"
            )
        self.critic.requires_grad_(False)
        return loaded
