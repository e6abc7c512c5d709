"""Filtered behaviour cloning ("%BC"): imitate only the best fraction of the data, ranked by return-to-go.

A worked example of an algorithm that lives outside rlft (docs/add-an-algorithm.md): one file, registered with
``@register``, named by a YAML's ``plugins:`` list. %BC is the baseline of Chen et al., 2021 ("Decision Transformer:
Reinforcement Learning via Sequence Modeling") and Emmons et al., 2022 ("RvS: What is Essential for Offline RL via
Supervised Learning?"): behaviour cloning restricted to the top ``keep_fraction`` of trajectories by return. Here the
ranking is per batch, on each chunk's discounted Monte Carlo return-to-go ``G`` (``ChunkBatch.mc_return``):

    L = sum_b w_b * l_BC(s_b, a_b) / sum_b w_b,    w_b = 1[G_b >= q_{1 - keep_fraction}(G)]

``l_BC`` is the policy's own BC loss (``Policy.bc_loss``), so every policy kind works. Rows with an unknown return
(online replay: ``mc_return`` is -inf or absent) are never kept; a batch without any known return is plain BC.
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


def top_fraction_weights(returns: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """``w_b = 1`` for the rows whose finite return is at least the batch's ``1 - keep_fraction`` quantile of the
    finite returns, else 0; all ones when no return is finite. ``returns`` [B] -> [B] float."""
    known = torch.isfinite(returns)
    if not bool(known.any()):
        return torch.ones_like(returns)
    threshold = torch.quantile(returns[known], 1.0 - keep_fraction)
    return (known & (returns >= threshold)).float()


@dataclasses.dataclass
class FilteredBCConfig(AlgoConfig):
    """%BC: behaviour cloning on the best ``keep_fraction`` of each batch by return-to-go."""

    keep_fraction: float = 0.25
    """Fraction of each batch imitated, the chunks with the highest Monte Carlo return-to-go (1 = plain BC)."""
    lr: float = 3e-4
    """Adam learning rate of the policy."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ConfigError(f"filtered_bc.keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if self.lr <= 0:
            raise ConfigError(f"filtered_bc.lr must be > 0, got {self.lr}")


@register
class FilteredBC(Algorithm):
    """Behaviour cloning on the top ``keep_fraction`` of each batch by return-to-go."""

    Config: ClassVar[type[AlgoConfig]] = FilteredBCConfig
    name: ClassVar[str] = "filtered_bc"
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian", "flow", "shortcut", "consistency", "diffusion")

    def __init__(
        self, cfg: FilteredBCConfig, obs_dim: int, action_dim: int, act_horizon: int, policy=None, device="cpu"
    ):
        super().__init__(cfg, obs_dim, action_dim, act_horizon, policy=policy, device=device)
        self.cfg: FilteredBCConfig = cfg
        self.actor_optim = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        returns = batch.mc_return if batch.mc_return is not None else torch.full_like(batch.reward, -torch.inf)
        w = top_fraction_weights(returns, self.cfg.keep_fraction)
        loss, info = self.policy.bc_loss(batch.obs, batch.action, batch.valid_mask, weights=w / w.mean())
        optimizer_step(loss, self.actor_optim)
        self.num_updates += 1
        return metrics_to_floats(
            {**prefixed("actor", info), "actor/actor_loss": loss.detach(), "actor/kept_fraction": w.mean()}
        )
