"""Behaviour cloning: maximise the policy's likelihood of the dataset's action chunks.

The loss is whatever the policy defines as its BC loss (``Policy.bc_loss``): the NLL per valid dimension for the
Gaussian policy, the flow-matching loss for the flow policy. Padded chunk steps (``valid_mask == 0``) never enter it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from rlft.algos import register
from rlft.algos.base import AlgoConfig, Algorithm, optimizer_step
from rlft.algos.losses import metrics_to_floats, prefixed
from rlft.data.batch import ChunkBatch
from rlft.errors import ConfigError


@dataclasses.dataclass
class BCConfig(AlgoConfig):
    """Behaviour cloning."""

    lr: float = 3e-4
    """Adam(W) learning rate of the policy."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay; 0 = plain Adam."""
    grad_clip: float | None = None
    """Clip the policy's gradient to this global L2 norm (None = no clipping; the norm is then not logged)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr <= 0:
            raise ConfigError(f"bc.lr must be > 0, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"bc.grad_clip must be > 0 or null, got {self.grad_clip}")


@register
class BC(Algorithm):
    """Behaviour cloning with ``policy.bc_loss``; works with every policy kind."""

    Config: ClassVar[type[AlgoConfig]] = BCConfig
    name: ClassVar[str] = "bc"
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian", "flow", "shortcut", "consistency", "diffusion")
    encoder_training: ClassVar[str] = "end_to_end"  # camera observations: the BC loss trains the image encoder
    imitation_only: ClassVar[bool] = True  # ChunkBatch.weight weighs each row's BC loss

    def __init__(self, cfg: BCConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: BCConfig = cfg
        self.actor_optim = torch.optim.AdamW(
            self.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
        )

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        loss, info = self.policy.bc_loss(batch.obs, batch.action, batch.valid_mask, weights=batch.weight)
        norm = optimizer_step(loss, self.actor_optim, max_grad_norm=self.cfg.grad_clip)
        metrics: dict[str, object] = prefixed("actor", info)
        if norm is not None:
            metrics["actor/grad_norm"] = norm
        metrics["actor/actor_loss"] = loss.detach()
        metrics.setdefault("actor/bc_loss", loss.detach())
        self.num_updates += 1
        return metrics_to_floats(metrics)
