"""TD3+BC (Fujimoto & Gu, 2021) over action chunks: TD3 with a behaviour-cloning term in the actor loss.

One update (``num_updates`` counts them):

* critic (every update): ``L_Q = sum_i E[(Q_i(s, a) - y)^2]`` with the clipped double-Q target and target policy
  smoothing

      y = r + bootstrap * min_i Qtarget_i(s', a'),   a' = clip(pi_target(s') + clip(eps, -c, c), -1, 1),
      eps ~ N(0, sigma^2 I)   (sigma = ``policy_noise``, c = ``noise_clip``; bootstrap = gamma^k (1 - terminated))

* actor (every ``policy_delay``-th update, the first one included):

      L_pi = -lambda * E[Q_1(s, pi(s))] + E[mse_valid(pi(s), a)],   lambda = alpha / E|Q_1(s, pi(s))|   (detached)

  ``mse_valid`` is the squared error averaged over the chunk's valid steps (``valid_mask``: padded steps past the
  episode's end never enter it). ``lambda`` is logged as ``actor/actor_lam``; TD3+BC uses the first critic only.
* target networks (critics and the target actor) move by Polyak averaging with rate ``tau`` after each actor step,
  as in TD3.

The deterministic actor ``pi(s)`` is ``policy.sample(obs, deterministic=True)``, which is differentiable for both
policies: ``tanh(mean)`` for the Gaussian policy (its log-std head gets no gradient here and stays as built), and
the Euler-integrated flow from zero noise for the flow policy (gradients flow through every velocity-net call; the
final clamp to [-1, 1] passes no gradient for coordinates outside the box). Evaluation uses the same deterministic
action, so the trained map is exactly the deployed one.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, CriticConfig, optimizer_step
from rlft.algos.losses import Info, metrics_to_floats, prefixed, td_loss, td_target
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError
from rlft.nets.ensemble import soft_update
from rlft.policies.gaussian import masked_sum, valid_dim_count


# ---------------------------------------------------------------------------------------------------------------
# pure losses
# ---------------------------------------------------------------------------------------------------------------
def smoothed_target_action(
    target_action: torch.Tensor, noise: torch.Tensor, noise_std: float, noise_clip: float
) -> torch.Tensor:
    """TD3's target policy smoothing: ``clip(a + clip(noise_std * noise, -c, c), -1, 1)``; ``noise`` ~ N(0, I)."""
    eps = (noise_std * noise).clamp(-noise_clip, noise_clip)
    return (target_action + eps).clamp(-1.0, 1.0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
    """``mean_b [sum_{h valid, a} (pred - target)^2 / (A * #valid steps of b)]`` over chunks [B, H, A]."""
    sq = (pred - target).square()
    return (masked_sum(sq, valid_mask) / valid_dim_count(valid_mask, sq.shape).to(sq)).mean()


def td3bc_actor_loss(
    q_pi: torch.Tensor,
    pi_action: torch.Tensor,
    data_action: torch.Tensor,
    valid_mask: torch.Tensor,
    alpha: float,
    lam_form: str = "paper",
) -> tuple[torch.Tensor, Info]:
    """TD3+BC actor loss ``-lambda * mean_b Q(s_b, pi(s_b)) + masked_mse(pi(s), a)``.

    ``lambda = alpha / mean_b|Q|`` (``lam_form='paper'``, Fujimoto & Gu) or ``alpha / (alpha + mean_b|Q|)``
    (``'bounded'``: the form used by the offline SAC study of docs/algorithms/sac_offline.md, bounded by 1; it falls to
    ~0.01 when Q reaches ~100).
    ``q_pi`` [B] (with grad, the critic at the policy's action); ``pi_action``/``data_action`` [B, H, A];
    ``lambda`` is computed from the detached Q values (a normaliser, not a learnt quantity).
    info: ``actor_loss``, ``actor_q`` (mean Q of pi(s)), ``actor_lam``, ``bc_loss`` (the masked MSE).
    """
    q_abs = q_pi.detach().abs().mean()
    lam = alpha / (q_abs.clamp_min(1e-6) if lam_form == "paper" else alpha + q_abs)
    bc = masked_mse(pi_action, data_action, valid_mask)
    loss = -lam * q_pi.mean() + bc
    with torch.no_grad():
        info = {"actor_loss": loss.detach(), "actor_q": q_pi.mean(), "actor_lam": lam, "bc_loss": bc.detach()}
    return loss, info


# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TD3BCConfig(CriticConfig):
    """TD3+BC (offline). Defaults are the paper's. Critics: the target is the min over all target critics, the
    actor uses the first critic; ``tau`` moves the target critics and the target actor after each actor step."""

    alpha: float = 2.5
    """Q-term weight numerator: lambda = alpha / mean|Q(s, pi(s))| (paper: 2.5)."""
    policy_noise: float = 0.2
    """Std of the target policy smoothing noise, in normalised action units ([-1, 1])."""
    noise_clip: float = 0.5
    """Clip of the smoothing noise."""
    policy_delay: int = 2
    """Actor and target-network update every this many critic updates (TD3's delayed policy updates)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the policy."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise ConfigError(f"td3bc.alpha must be >= 0, got {self.alpha}")
        if self.policy_noise < 0:
            raise ConfigError(f"td3bc.policy_noise must be >= 0, got {self.policy_noise}")
        if self.noise_clip < 0:
            raise ConfigError(f"td3bc.noise_clip must be >= 0, got {self.noise_clip}")
        if self.policy_delay < 1:
            raise ConfigError(f"td3bc.policy_delay must be >= 1, got {self.policy_delay}")


@register
class TD3BC(Algorithm):
    """TD3+BC with a deterministic actor (Gaussian mean through tanh, or the flow from zero noise)."""

    Config: ClassVar[type[AlgoConfig]] = TD3BCConfig
    name: ClassVar[str] = "td3bc"
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian", "flow")

    def __init__(self, cfg: TD3BCConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: TD3BCConfig = cfg
        self.critic = self.critic_ensemble(act_horizon * action_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.actor_params = list(self.policy.parameters())
        self.actor_optim = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr, fused=True)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)
        self._first = torch.zeros(1, dtype=torch.long)  # member index of Q_1 (on the CPU, as CriticEnsemble wants)

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        cfg = self.cfg
        metrics: dict[str, object] = {}

        # ---- critic: clipped double-Q target with target policy smoothing ----
        with torch.no_grad():
            a_next = self.target_policy.sample(batch.next_obs, deterministic=True)
            a_next = smoothed_target_action(a_next, torch.randn_like(a_next), cfg.policy_noise, cfg.noise_clip)
            y = td_target(batch.reward, batch.bootstrap, self.target_critic(batch.next_obs, a_next).min(dim=0).values)
        q = self.critic(batch.obs, batch.action)
        critic_loss, critic_info = td_loss(q, y)
        optimizer_step(critic_loss, self.critic_optim)
        metrics.update(prefixed("critic", critic_info))

        # ---- delayed actor and target updates ----
        if self.num_updates % cfg.policy_delay == 0:
            pi = self.policy.sample(batch.obs, deterministic=True)
            q_pi = self.critic(batch.obs, pi, members=self._first)[0]
            actor_loss, actor_info = td3bc_actor_loss(q_pi, pi, batch.action, batch.valid_mask, cfg.alpha)
            optimizer_step(actor_loss, self.actor_optim, self.actor_params)  # no gradient into the critics
            soft_update(self.target_critic, self.critic, cfg.tau)
            soft_update(self.target_policy, self.policy, cfg.tau)
            metrics.update(prefixed("actor", actor_info))

        self.num_updates += 1
        return metrics_to_floats(metrics)
