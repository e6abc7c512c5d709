"""DSRL's deployable artifact: a frozen base policy steered through its start noise by a latent actor.

    act(obs):  w = latent.act(obs)                       (latent noise chunk, in [-m, m]^(H x A))
               chunk = base.act(obs, noise=w)            (the frozen flow policy decodes it)

``base`` is any policy whose ``sample(obs_n, noise=...)`` takes its start noise explicitly (a ``FlowPolicy``; the
Gaussian policy's eps works too); ``latent`` is the actor DSRL trains (a tanh Gaussian over the noise chunk whose
``Normalizer`` maps its (-1, 1) output to the noise box [-m, m] and whose observation statistics are the base
policy's). The composite is an ordinary registered ``Policy``: ``rlft eval`` evaluates it, ``load_policy`` rebuilds
it from the one file (both parts' classes, constructor arguments and weights are saved).

Training code unpacks it with ``split_steered``: the runner hands the latent actor to the algorithm and the base
policy to the noise-action env (``rlft.envs.noise_action``), so a later stage can continue from it.
"""

from __future__ import annotations

import copy

import torch

from rlft.errors import CheckpointError
from rlft.policies.base import POLICY_CLASSES, Policy, register_policy


@register_policy
class SteeredFlowPolicy(Policy):
    """``base`` (frozen) decoding the noise chosen by ``latent``; see the module docstring."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        base_class: str,
        base_kwargs: dict,
        latent_class: str,
        latent_kwargs: dict,
    ):
        super().__init__(
            obs_dim,
            action_dim,
            act_horizon,
            base_class=base_class,
            base_kwargs=dict(base_kwargs),
            latent_class=latent_class,
            latent_kwargs=dict(latent_kwargs),
        )
        for cls in (base_class, latent_class):
            if cls not in POLICY_CLASSES:
                raise CheckpointError(f"steered policy: unknown policy class {cls!r}; known: {sorted(POLICY_CLASSES)}")
        self.base: Policy = POLICY_CLASSES[base_class](**base_kwargs)
        self.latent: Policy = POLICY_CLASSES[latent_class](**latent_kwargs)
        self._check()
        self.base.requires_grad_(False)

    def _check(self) -> None:
        b, lat = self.base, self.latent
        if (b.obs_dim, b.action_dim, b.act_horizon) != (self.obs_dim, self.action_dim, self.act_horizon):
            raise CheckpointError("steered policy: base policy dims differ from the composite's")
        noise = tuple(getattr(b, "noise_shape", b.chunk_shape))
        if lat.obs_dim != b.obs_dim or tuple(lat.chunk_shape) != noise:
            raise CheckpointError(
                f"steered policy: the latent actor maps obs_dim {lat.obs_dim} to chunks {tuple(lat.chunk_shape)} but "
                f"the base policy needs obs_dim {b.obs_dim} and noise {noise}"
            )

    @classmethod
    def compose(cls, base: Policy, latent: Policy) -> "SteeredFlowPolicy":
        """Wrap existing modules (shared, not copied: training ``latent`` trains the composite). The composite's own
        normaliser is a copy of the base policy's (it maps raw obs and env actions)."""
        self = cls.__new__(cls)
        Policy.__init__(
            self,
            base.obs_dim,
            base.action_dim,
            base.act_horizon,
            base_class=type(base).__name__,
            base_kwargs=dict(base.kwargs),
            latent_class=type(latent).__name__,
            latent_kwargs=dict(latent.kwargs),
        )
        self.base, self.latent = base, latent
        self._check()
        self.base.requires_grad_(False)
        self.normalizer = copy.deepcopy(base.normalizer)
        return self

    @property
    def noise_magnitude(self) -> torch.Tensor:
        """Upper bound of the latent box (per action dim), from the latent actor's normaliser."""
        return self.latent.normalizer.act_high

    def latent_noise(
        self, obs_n: torch.Tensor, noise: torch.Tensor | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        """The latent actor's noise chunk w [B, H, A] in raw noise units (within the box)."""
        w_n = self.latent.sample(obs_n, noise=noise, deterministic=deterministic)
        return self.latent.normalizer.unnormalize_action(w_n.clamp(-1.0, 1.0))

    def sample(
        self, obs_n: torch.Tensor, noise: torch.Tensor | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        """Normalised env chunk: ``base.sample(obs_n, noise=w)`` with ``w`` the latent actor's noise. ``noise`` and
        ``deterministic`` go to the latent actor (its eps / its mean); the base policy is always driven by ``w``.
        ``obs_n`` is normalised with the base policy's statistics, which the latent actor shares."""
        return self.base.sample(obs_n, noise=self.latent_noise(obs_n, noise, deterministic))


@torch.no_grad()
def start_at_prior_mode(latent: Policy, scale: float = 1e-2) -> Policy:
    """Shrink the latent actor's output layer by ``scale`` so a fresh actor's mean noise is ~0 -- the prior's mode,
    i.e. the steered policy starts as the base policy's deterministic behaviour (its log-std head sits at the middle of
    its range), as a reference DSRL implementation initialises its mean and log-std heads (1e-2 scale)."""
    last = [m for m in latent.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.weight.mul_(scale)
    last.bias.mul_(scale)
    return latent


def split_steered(policy: Policy) -> tuple[Policy | None, Policy]:
    """``(base, latent)`` of a steered policy; ``(None, policy)`` for any other policy."""
    if isinstance(policy, SteeredFlowPolicy):
        return policy.base, policy.latent
    return None, policy
