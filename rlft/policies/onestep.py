"""One-step flow policy: FQL's deployable actor ``a = mu(s, z)``, ``z ~ N(0, I)`` (one network call per chunk).

Flow Q-learning (Park et al., 2025) trains two actors: a flow-matching BC policy (the *teacher*, many Euler steps)
and a one-step policy ``mu(s, z)`` that maps the same noise ``z`` straight to an action chunk, distilled from the
teacher's Euler solution and pushed up the critic. ``mu`` is what acts; the teacher only shapes it.

This class holds both, so one saved file is everything FQL needs to continue (e.g. offline FQL -> online FQL in a
pipeline): ``flow`` (a ``FlowPolicy`` or subclass, the BC teacher; saved as class name + constructor kwargs) and
``actor`` (the MLP ``mu``). ``sample`` uses only
``actor``:

* ``noise`` [B, H, A] given: ``mu(s, noise)`` (DSRL-style explicit latent);
* ``deterministic``: ``mu(s, 0)`` (the mode of the noise prior, as the flow policy's deterministic action);
* otherwise ``mu(s, z)`` with a fresh ``z ~ N(0, I)``.

The output is clamped to [-1, 1]. ``bc_loss`` is the teacher's flow-matching loss (FQL's BC term).

Only FQL continues this policy (``needs_own_trainer``; FQL lists it in ``Algorithm.continues``): an algorithm that
only knows ``bc_loss`` (BC, IQL) would train the teacher and never the actor that acts, so ``Algorithm`` refuses the
hand-off with ``ConfigError``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from rlft.errors import CheckpointError
from rlft.nets.mlp import MLP
from rlft.policies.base import POLICY_CLASSES, Policy, register_policy
from rlft.policies.flow import FlowPolicy


def build_inner_flow(flow_class: str, flow_kwargs: dict[str, Any], dims: tuple[int, int, int]) -> FlowPolicy:
    """Rebuild the flow policy inside a composite policy from its class name and constructor kwargs (any registered
    ``FlowPolicy`` subclass, e.g. the consistency policy); its dims must be the composite's."""
    cls = POLICY_CLASSES.get(flow_class)
    if cls is None or not issubclass(cls, FlowPolicy):
        raise CheckpointError(f"composite policy: {flow_class!r} is not a registered FlowPolicy class")
    flow = cls(**flow_kwargs)
    if (flow.obs_dim, flow.action_dim, flow.act_horizon) != dims:
        raise CheckpointError(
            f"composite policy: inner flow dims {(flow.obs_dim, flow.action_dim, flow.act_horizon)} "
            f"differ from the composite's {dims}"
        )
    return flow


@register_policy
class OneStepFlowPolicy(Policy):
    """FQL's one-step actor ``mu(s, z)`` plus its flow BC teacher; see the module docstring."""

    needs_own_trainer: ClassVar[bool] = True

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        flow_class: str = "FlowPolicy",
        flow_kwargs: dict[str, Any] | None = None,
        hidden_dims: tuple[int, ...] = (256, 256, 256),
        layernorm: bool = False,
    ):
        flow_kwargs = dict(flow_kwargs or dict(obs_dim=obs_dim, action_dim=action_dim, act_horizon=act_horizon))
        hidden_dims = [int(h) for h in hidden_dims]
        super().__init__(
            obs_dim,
            action_dim,
            act_horizon,
            flow_class=flow_class,
            flow_kwargs=flow_kwargs,
            hidden_dims=hidden_dims,
            layernorm=layernorm,
        )
        self.flow = build_inner_flow(flow_class, flow_kwargs, (obs_dim, action_dim, act_horizon))
        flat = act_horizon * action_dim
        self.actor = MLP(obs_dim + flat, tuple(hidden_dims), flat, layernorm, act=nn.GELU)

    @classmethod
    def from_flow(cls, flow: FlowPolicy, hidden_dims=(256, 256, 256), layernorm: bool = False) -> "OneStepFlowPolicy":
        """Wrap a trained flow policy as the teacher (weights and normalisation copied) with a fresh one-step actor."""
        p = cls(
            flow.obs_dim,
            flow.action_dim,
            flow.act_horizon,
            flow_class=type(flow).__name__,
            flow_kwargs=dict(flow.kwargs),
            hidden_dims=hidden_dims,
            layernorm=layernorm,
        )
        p.flow.load_state_dict(flow.state_dict())
        p.normalizer.load_state_dict(flow.normalizer.state_dict())
        return p.to(flow.normalizer.obs_mean.device)

    def onestep(self, obs_n: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Unclamped ``mu(s, z)`` [B, H, A] (differentiable; FQL's distillation regresses this)."""
        B = obs_n.shape[0]
        out = self.actor(torch.cat([obs_n, z.reshape(B, -1).to(obs_n)], dim=-1))
        return out.reshape(B, self.act_horizon, self.action_dim)

    def sample(
        self, obs_n: torch.Tensor, noise: torch.Tensor | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        B = obs_n.shape[0]
        shape = (B, self.act_horizon, self.action_dim)
        if noise is not None:
            z = noise.reshape(shape)
        elif deterministic:
            z = torch.zeros(shape, dtype=obs_n.dtype, device=obs_n.device)
        else:
            z = torch.randn(shape, dtype=obs_n.dtype, device=obs_n.device)
        return self.onestep(obs_n, z).clamp(-1.0, 1.0)

    def bc_loss(self, obs_n, action_n, valid_mask, weights=None):
        """The teacher's flow-matching loss (``FlowPolicy.bc_loss``)."""
        return self.flow.bc_loss(obs_n, action_n, valid_mask, weights)
