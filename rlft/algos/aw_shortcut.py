"""AW-ShortCut-Flow: advantage-weighted shortcut flow policy over action chunks (offline).

AWCP's update (``rlft.algos.awcp``: IQL value/critic losses, actor = the policy's BC loss weighted per sample by
``w_b = min(exp(beta A_b) / mean_c exp(beta A_c), max_weight)``, no Q gradient into the policy) applied to the
shortcut flow policy (``rlft.policies.shortcut``, Frans et al., 2024), whose BC loss is flow matching on part of the
batch plus the self-consistency ``s(x_t, t, 2d) ~ sg[(s(x_t, t, d) + s(x'_{t+d}, t + d, d)) / 2]`` on the rest
(``policy.shortcut.bootstrap_frac``). Each row, flow or self-consistency, carries its sample's advantage weight, so both
the flow and the few-step shortcut maps are pulled towards high-advantage actions.

Metrics as AWCP: ``actor/awr_weights_mean``, ``awr_weights_max``, ``awr_advantage_mean``, ``eff_num``, the policy's
``bc_loss`` / ``flow_loss`` / ``shortcut_loss``, and the critic's ``value_loss``, ``v_mean``, ``q_mean`` ...
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from rlft.algos import register
from rlft.algos.awcp import AWCP, AWCPConfig
from rlft.algos.base import AlgoConfig
from rlft.policies.config import PolicyConfig


@dataclasses.dataclass
class AWShortcutConfig(AWCPConfig):
    """AW-ShortCut-Flow: AWCP's fields (IQL critic, normalised advantage weights) with a shortcut flow actor."""

    policy: PolicyConfig = dataclasses.field(default_factory=lambda: PolicyConfig(kind="shortcut"))
    """The actor: a shortcut flow policy (``policy.shortcut.steps`` sampler steps)."""


@register
class AWShortcut(AWCP):
    """AWCP's update on a shortcut flow policy (flow + self-consistency loss, advantage-weighted per sample)."""

    Config: ClassVar[type[AlgoConfig]] = AWShortcutConfig
    name: ClassVar[str] = "aw_shortcut"
    supported_policies: ClassVar[tuple[str, ...]] = ("shortcut",)
