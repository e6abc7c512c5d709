"""Residual RL's deployable artifact: a frozen chunk policy plus a per-step residual actor (ResiP, Ankile et al.,
2024; see ``rlft.envs.residual`` for the action composition and its schedule).

    every H steps: chunk = base.act(o_t)                          (deterministic)
    every step:    a_t = clip(chunk[t mod H] + bound * delta_t, low, high),
                   delta_t = residual.act(concat(o_t, chunk[t mod H]))

The composite faces the env like its base policy (``obs_dim``, ``action_dim``, ``act_horizon`` are the base's), but it
acts at every step, so it is run through its ``executor``: ``ChunkExecutor(ResidualActionWrapper(env, base, bound),
1, gamma)``. ``act`` therefore takes that wrapper's observation ``concat(o_t, a^base_t)`` and returns ``delta_t``
([1, A]); evaluation (``rlft eval``), rollouts (``rlft collect --mode policy``) and ``load_policy`` take it like any
other policy. ``rlft.train.adapters.split_composite`` hands the parts back to training, so a later stage can continue the
residual.
"""

from __future__ import annotations

import copy

import torch

from rlft.errors import CheckpointError
from rlft.policies.base import POLICY_CLASSES, Policy, register_policy


@torch.no_grad()
def zero_output(policy: Policy) -> Policy:
    """Zero the last linear layer, so a fresh residual actor's deterministic output is exactly 0 (tanh(0)): the
    composite starts as the base policy, bit for bit. (Its log-std head starts mid-range; the layer still learns,
    since its gradient is the hidden activations times the output gradient.)"""
    last = [m for m in policy.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.weight.zero_()
    last.bias.zero_()
    return policy


@register_policy
class ResidualPolicy(Policy):
    """``base`` (frozen chunk policy) corrected at every step by ``residual``; see the module docstring."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        base_class: str,
        base_kwargs: dict,
        residual_class: str,
        residual_kwargs: dict,
        bound: list[float],
    ):
        super().__init__(
            obs_dim,
            action_dim,
            act_horizon,
            base_class=base_class,
            base_kwargs=dict(base_kwargs),
            residual_class=residual_class,
            residual_kwargs=dict(residual_kwargs),
            bound=[float(b) for b in bound],
        )
        for cls in (base_class, residual_class):
            if cls not in POLICY_CLASSES:
                raise CheckpointError(f"residual policy: unknown policy class {cls!r}; known: {sorted(POLICY_CLASSES)}")
        self.base: Policy = POLICY_CLASSES[base_class](**base_kwargs)
        self.residual: Policy = POLICY_CLASSES[residual_class](**residual_kwargs)
        self.bound = [float(b) for b in bound]
        self._check()
        self.base.requires_grad_(False)
        self.normalizer = copy.deepcopy(self.residual.normalizer)

    def _check(self) -> None:
        b, r = self.base, self.residual
        if (b.obs_dim, b.action_dim, b.act_horizon) != (self.obs_dim, self.action_dim, self.act_horizon):
            raise CheckpointError("residual policy: base policy dims differ from the composite's")
        if (r.obs_dim, r.action_dim, r.act_horizon) != (b.obs_dim + b.action_dim, b.action_dim, 1):
            raise CheckpointError(
                f"residual policy: the residual actor has (obs_dim, action_dim, act_horizon) = "
                f"{(r.obs_dim, r.action_dim, r.act_horizon)}; the base policy needs "
                f"{(b.obs_dim + b.action_dim, b.action_dim, 1)} (its observation plus its action, one step)"
            )
        if len(self.bound) != b.action_dim or not all(x >= 0 for x in self.bound) or max(self.bound) <= 0:
            raise CheckpointError(
                f"residual policy: bound {self.bound} must hold {b.action_dim} values >= 0, at least one positive"
            )

    @classmethod
    def compose(cls, base: Policy, residual: Policy, bound) -> "ResidualPolicy":
        """Wrap existing modules (shared, not copied: training ``residual`` trains the composite); ``bound`` [A] is
        the largest correction per action dimension in env units."""
        self = cls.__new__(cls)
        bound = [float(b) for b in bound]
        Policy.__init__(
            self,
            base.obs_dim,
            base.action_dim,
            base.act_horizon,
            base_class=type(base).__name__,
            base_kwargs=dict(base.kwargs),
            residual_class=type(residual).__name__,
            residual_kwargs=dict(residual.kwargs),
            bound=bound,
        )
        self.base, self.residual, self.bound = base, residual, bound
        self._check()
        self.base.requires_grad_(False)
        self.normalizer = copy.deepcopy(residual.normalizer)
        return self

    def executor(self, env, gamma: float):
        from rlft.envs.residual import ResidualActionWrapper
        from rlft.envs.wrappers import ChunkExecutor

        return ChunkExecutor(ResidualActionWrapper(env, self.base, self.bound), 1, gamma)

    def sample(
        self, obs_n: torch.Tensor, noise: torch.Tensor | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        """The residual actor's normalised ``delta`` [B, 1, A] (``obs_n`` is the executor's normalised observation)."""
        return self.residual.sample(obs_n, noise=noise, deterministic=deterministic)

    @torch.no_grad()
    def act(self, obs, noise: torch.Tensor | None = None, deterministic: bool = True) -> torch.Tensor:
        """The executor's observation ``concat(o_t, a^base_t)`` [B, O + A] -> ``delta_t`` [B, 1, A] in [-1, 1]."""
        return self.residual.act(obs, noise=noise, deterministic=deterministic)
