"""DSRL-NA: noise-aliased DSRL (Wagenmaker et al., 2025, "Steering Your Diffusion Policy with Latent Space RL").

A frozen base policy ``pi_dp`` (a flow policy) maps an observation and a start-noise chunk to an action chunk,
``a = pi_dp(s, w)``. A latent actor ``pi_W(w|s)`` (tanh Gaussian over the noise chunk, scaled to the noise box
[-m, m] by its normaliser) chooses the noise. DSRL-NA learns two critics:

* action critic  ``Q^A(s, a)`` by TD on the *executed* env chunks (``batch.executed_action``: the decoded chunk the
  noise-action env stored, or a dataset chunk -- so offline data with arbitrary actions is usable):

      L_A = sum_i E[(Q^A_i(s, a) - y)^2],   y = r + gamma^k (1 - terminated) * agg_i Qbar^A_i(s', pi_dp(s', w')),
      w' ~ pi_W(.|s')   (agg = min or mean over the target members; no entropy term in the backup)

* noise critic  ``Q^W(s, w)`` distilled from the action critic at noise drawn from the prior (the "aliasing": every
  noise that decodes to the same chunk gets the same value, whichever noise was actually executed):

      L_W = sum_i E_{w ~ N(0, I)}[(Q^W_i(s, w) - Q^A_i(s, pi_dp(s, w)))^2]       (member i from member i)

* latent actor and temperature, SAC on the noise critic (``losses.sac_actor_loss`` / ``temperature_loss``):

      L_pi = E[alpha * log pi_W(w|s) - mean_i Q^W_i(s, w)],  w ~ pi_W(.|s) reparameterised,
      target entropy H_target = target_entropy_per_dim * H * A unless ``target_entropy`` is given.

``batch.action`` (the stored latent) is never read: what was executed is all Q^A needs, and Q^W learns from prior
draws. ``log pi_W`` is the density of the *normalised* latent (the actor's (-1, 1) output), as in rlft's SAC
(``rlft.algos.sac``). The critic steps on every update, the actor/temperature on every ``actor_update_every``-th; the
target critic follows the critic by Polyak averaging. Decoding uses the base policy's ``sample(obs_n, noise=w)``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, Literal

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig, optimizer_step
from rlft.algos.losses import Info, metrics_to_floats, prefixed, sac_actor_loss, td_loss, td_target
from rlft.algos.temperature import Temperature
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import soft_update


# ----------------------------------------------------------------------------------------------------------------
# pure loss functions
# ----------------------------------------------------------------------------------------------------------------
def na_critic_target(next_q: torch.Tensor, reward: torch.Tensor, bootstrap: torch.Tensor, agg: str) -> torch.Tensor:
    """``y = r + bootstrap * agg_i next_q_i`` with ``next_q`` [N, B] the target action critic at (s', pi_dp(s', w')),
    ``agg`` 'min' or 'mean' over members, ``bootstrap = gamma^k (1 - terminated)``. Returns y [B]."""
    v = next_q.min(dim=0).values if agg == "min" else next_q.mean(dim=0)
    return td_target(reward, bootstrap, v)


def noise_distill_loss(q_w: torch.Tensor, q_a: torch.Tensor) -> tuple[torch.Tensor, Info]:
    """Member-wise distillation of the action critic into the noise critic:

        L_W = sum_i mean_b (Q^W_i(s_b, w_b) - Q^A_i(s_b, pi_dp(s_b, w_b)))^2

    ``q_w`` [N, B] (with grad), ``q_a`` [N, B] (no grad). info: ``distill_loss``, ``qw_mean`` (mean Q^W),
    ``distill_error`` (mean |Q^W - Q^A|).
    """
    diff = q_w - q_a.detach()
    loss = diff.square().mean(dim=1).sum()
    with torch.no_grad():
        info = {"distill_loss": loss.detach(), "qw_mean": q_w.mean(), "distill_error": diff.abs().mean()}
    return loss, info


# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DSRLNAConfig(CriticConfig):
    """DSRL-NA (online; offline rows usable too, through their executed actions). The critic fields apply to both
    ensembles, Q^A and Q^W (``critic_lr`` is Q^A's, ``tau`` moves the target Q^A; DSRL's official critics are
    3 x 2048 with LayerNorm)."""

    utd_ratio: int = 20
    """Online: gradient updates per environment macro-step (DSRL: 20). Each update decodes two batches through the
    base policy, so on a CPU a smaller value is usually needed."""
    warmup_steps: int = 5000
    """Online: environment steps collected before updates start."""
    target_agg: Literal["min", "mean"] = "min"
    """Aggregation of the target action critic's members in the TD target: 'min' (clipped double Q) or 'mean'."""
    actor_lr: float = 1e-4
    """Adam learning rate of the latent actor."""
    noise_critic_lr: float = 3e-4
    """Adam learning rate of the noise critic Q^W."""
    temperature_lr: float = 1e-4
    """Adam learning rate of log(alpha)."""
    init_temperature: float = 0.1
    """Initial alpha."""
    learn_temperature: bool = True
    """Tune alpha towards the target entropy (False: alpha stays at init_temperature)."""
    target_entropy: float | None = None
    """Target entropy of the latent actor in nats per chunk (normalised latent); None = per_dim * H * A."""
    target_entropy_per_dim: float = -0.5
    """Target entropy per latent dimension when ``target_entropy`` is None (target = this * latent_dim)."""
    actor_update_every: int = 1
    """Update the latent actor and the temperature on every k-th update (the critics on every update)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_temperature <= 0:
            raise ConfigError(f"dsrl_na.init_temperature must be > 0, got {self.init_temperature}")
        if self.actor_update_every < 1:
            raise ConfigError(f"dsrl_na.actor_update_every must be >= 1, got {self.actor_update_every}")


@register
class DSRLNA(Algorithm):
    """DSRL-NA: action critic by TD, noise critic distilled from it at prior noise, SAC latent actor on the noise
    critic; the base policy stays frozen."""

    Config: ClassVar[type[AlgoConfig]] = DSRLNAConfig
    name: ClassVar[str] = "dsrl_na"
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian",)
    uses_base_policy: ClassVar[bool] = True

    def __init__(
        self,
        cfg: DSRLNAConfig,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        policy=None,
        device="cpu",
        base_policy=None,
    ):
        if base_policy is None:
            raise ConfigError("dsrl_na: needs the frozen base policy whose noise it steers (TrainConfig.base_policy)")
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: DSRLNAConfig = cfg
        if not getattr(self.policy, "has_log_prob", False):
            raise ConfigError(
                f"dsrl_na: the latent actor ({type(self.policy).__name__}) needs a tractable "
                "log-probability; use policy.kind: gaussian"
            )
        self.base_policy = base_policy.to(self.device).requires_grad_(False)
        noise = tuple(getattr(base_policy, "noise_shape", base_policy.chunk_shape))
        if noise != (act_horizon, action_dim):
            raise ConfigError(
                f"dsrl_na: the latent actor's chunk ({act_horizon}, {action_dim}) must equal the base "
                f"policy's noise shape {noise}"
            )
        exec_dim = base_policy.act_horizon * base_policy.action_dim
        self.critic = self.critic_ensemble(exec_dim)  # Q^A(s, a)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.noise_critic = self.critic_ensemble(act_horizon * action_dim)  # Q^W(s, w)
        self.actor_params = list(self.policy.parameters())
        self.actor_optim = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr, fused=True)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)
        self.noise_critic_optim = torch.optim.Adam(self.noise_critic.parameters(), lr=cfg.noise_critic_lr, fused=True)
        self.temperature = Temperature(
            cfg.init_temperature,
            cfg.temperature_lr,
            cfg.learn_temperature,
            cfg.target_entropy
            if cfg.target_entropy is not None
            else cfg.target_entropy_per_dim * act_horizon * action_dim,
            device=self.device,
        )

    # ---- the frozen decoder ----
    def noise_of(self, w_n: torch.Tensor) -> torch.Tensor:
        """The latent actor's normalised output (-1, 1) -> raw noise in the box (its normaliser's bounds)."""
        return self.policy.normalizer.unnormalize_action(w_n)

    @torch.no_grad()
    def decode(self, obs_n: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Normalised env chunk the base policy maps (obs, raw noise w) to."""
        return self.base_policy.sample(obs_n, noise=w)

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg = self.cfg
        alpha = self.temperature.alpha
        metrics: dict[str, object] = {}
        B = batch.batch_size

        # ---- action critic: TD on the executed chunks ----
        with torch.no_grad():
            w_next_n, _ = self.policy.rsample_log_prob(batch.next_obs)
            a_next = self.decode(batch.next_obs, self.noise_of(w_next_n))
            y = na_critic_target(
                self.target_critic(batch.next_obs, a_next), batch.reward, batch.bootstrap, cfg.target_agg
            )
        q = self.critic(batch.obs, batch.executed_action)
        critic_loss, critic_info = td_loss(q, y)
        optimizer_step(critic_loss, self.critic_optim)
        soft_update(self.target_critic, self.critic, cfg.tau)
        metrics.update(prefixed("critic", critic_info))

        # ---- noise critic: distil Q^A at prior noise ----
        w_prior = torch.randn(B, self.act_horizon, self.action_dim, device=batch.obs.device)
        with torch.no_grad():
            q_a = self.critic(batch.obs, self.decode(batch.obs, w_prior))
        distill_loss, distill_info = noise_distill_loss(self.noise_critic(batch.obs, w_prior), q_a)
        optimizer_step(distill_loss, self.noise_critic_optim)
        metrics.update(prefixed("critic", distill_info))

        # ---- latent actor and temperature: SAC on the noise critic ----
        if self.num_updates % cfg.actor_update_every == 0:
            w_n, log_prob = self.policy.rsample_log_prob(batch.obs)
            q_pi = self.noise_critic(batch.obs, self.noise_of(w_n))
            actor_loss, actor_info = sac_actor_loss(q_pi, log_prob, alpha)
            optimizer_step(actor_loss, self.actor_optim, self.actor_params)  # no gradient into the noise critic
            metrics.update(prefixed("actor", actor_info))
            metrics.update(prefixed("alpha", self.temperature.step(log_prob)))

        self.num_updates += 1
        return metrics_to_floats(metrics)

    def load_pretrained(self, sd: dict[str, Any]) -> list[str]:
        """As ``Algorithm.load_pretrained`` (e.g. Q^A from an offline IQL/AW-MLE stage's ``critic``), never touching
        the base policy; a loaded ``critic`` without a ``target_critic`` also becomes the target."""
        loaded = super().load_pretrained({k: v for k, v in sd.items() if k != "base_policy"})
        if "critic" in loaded and "target_critic" not in loaded:
            self.target_critic.load_state_dict(self.critic.state_dict())
        return loaded
