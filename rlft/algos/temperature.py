"""SAC's learned entropy temperature (Haarnoja et al., 2018, "Soft Actor-Critic Algorithms and Applications"),
shared by every algorithm with an entropy term (SAC/RLPD, CQL, DSRL-NA, the offline SAC study).

    alpha = exp(log_alpha),    L_alpha = -log_alpha * E[log pi(a|s) + H_target]      (``losses.temperature_loss``)

Gradient descent raises alpha while the policy's entropy is below ``H_target`` and lowers it above. ``H_target`` is
fixed at construction, or -- with ``cap_at_first_policy`` -- lowered once, on the first step, to the entropy of the
policy as it starts (``min(H_target, -E[log pi])``), so a pretrained policy is never asked to be more random than it
is (see ``rlft.algos.sac``). The value used is saved in ``state_dict`` and logged as ``alpha/target_entropy``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rlft.algos.base import optimizer_step
from rlft.algos.losses import Info, temperature_loss


class Temperature:
    """``log_alpha`` with its Adam optimiser and target entropy; ``step(log_prob)`` is one temperature update."""

    def __init__(
        self,
        init: float,
        lr: float,
        learn: bool,
        target_entropy: float,
        cap_at_first_policy: bool = False,
        device: str | torch.device = "cpu",
    ):
        self.log_alpha = torch.tensor(math.log(init), device=device, requires_grad=True)
        self.optim = torch.optim.Adam([self.log_alpha], lr=lr, fused=True)
        self.learn = learn
        self.target_entropy = float(target_entropy)
        self.cap_pending = cap_at_first_policy

    @property
    def alpha(self) -> torch.Tensor:
        """The current alpha (no gradient)."""
        return self.log_alpha.detach().exp()

    def step(self, log_prob: torch.Tensor) -> Info:
        """One update towards the target entropy from the policy's ``log_prob`` [B] (detached here); returns the
        ``alpha/*`` metrics (alpha before the step). With ``learn=False`` alpha stays put and only the metrics come
        back."""
        if self.cap_pending:
            self.target_entropy = min(self.target_entropy, float(-log_prob.detach().mean()))
            self.cap_pending = False
        loss, info = temperature_loss(self.log_alpha, log_prob, self.target_entropy)
        if self.learn:
            optimizer_step(loss, self.optim)
        return info

    def state_dict(self) -> dict[str, Any]:
        return {
            "log_alpha": self.log_alpha.detach().clone(),
            "optim": self.optim.state_dict(),
            "target_entropy": self.target_entropy,
            "cap_pending": self.cap_pending,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_alpha.copy_(sd["log_alpha"])
        self.optim.load_state_dict(sd["optim"])
        self.target_entropy = float(sd["target_entropy"])
        self.cap_pending = bool(sd["cap_pending"])
