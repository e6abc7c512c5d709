"""An exponential moving average (EMA) of a policy's weights: the copy a stage evaluates and saves.

After every update, for each floating-point parameter

    theta_ema <- d_n * theta_ema + (1 - d_n) * theta,      d_n = min(decay, (1 + n) / (10 + n)),

where n counts the updates so far (the warm-up ``(1 + n) / (10 + n)`` lets the average follow the first updates instead
of holding on to the initial weights). Buffers (normalisation statistics, fixed evaluation noise) are copied as they
are. Diffusion Policy and most flow/diffusion robot policies deploy such an average: a flow policy's deterministic
action (decoded from zero noise) moves a lot between neighbouring updates, and the average smooths that out.

The algorithm keeps training (and exploring with) its own policy; only evaluation and the saved files use the EMA.
"""

from __future__ import annotations

import copy

import torch

from rlft.errors import ConfigError
from rlft.policies.base import Policy


class PolicyEMA:
    """EMA copy of ``policy`` (see the module docstring); ``decay`` in (0, 1)."""

    def __init__(self, policy: Policy, decay: float):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"policy_ema: decay must be in (0, 1) (or 0 for off), got {decay}")
        self.decay, self.num_updates = float(decay), 0
        self.policy: Policy = copy.deepcopy(policy).requires_grad_(False)
        # only trained parameters move (a steered policy's frozen base stays as copied); lists built once, not per update
        pairs = [(e, s) for e, s in zip(self.policy.parameters(), policy.parameters()) if s.requires_grad]
        self._avg, self._live = [e for e, _ in pairs], [s.detach() for _, s in pairs]
        self._buffers = list(zip(self.policy.buffers(), policy.buffers()))

    def rate(self) -> float:
        """The current ``1 - d_n`` (how far one update moves the average)."""
        return 1.0 - min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        if self._avg:
            torch._foreach_lerp_(self._avg, self._live, self.rate())
        for e, s in self._buffers:
            e.copy_(s)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.num_updates = int(state["num_updates"])
