"""Observation/action normalisation, stored with every policy.

* Observations: ``(obs - mean) / (std + eps)`` with mean/std from the offline dataset. ``eps`` matters: some OGBench
  observation dimensions (cube quaternion parts) have std ~1e-4 in oracle data.
* Actions: affine map of the env's box ``[low, high]`` to ``[-1, 1]`` (identity for OGBench, whose box is [-1, 1]).

The same ``Normalizer`` is used by the dataset sampler, the replay buffer and the policy (which maps raw env
observations to normalised ones and its normalised actions back to env actions).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Normalizer(nn.Module):
    """Holds obs mean/std and action low/high as buffers (so they are saved in the policy's state_dict)."""

    def __init__(self, obs_dim: int, action_dim: int, eps: float = 1e-2):
        super().__init__()
        self.eps = eps
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("act_low", -torch.ones(action_dim))
        self.register_buffer("act_high", torch.ones(action_dim))

    @torch.no_grad()
    def set_stats(self, obs_mean, obs_std, act_low, act_high) -> "Normalizer":
        for name, v in (("obs_mean", obs_mean), ("obs_std", obs_std), ("act_low", act_low), ("act_high", act_high)):
            getattr(self, name).copy_(torch.as_tensor(np.asarray(v), dtype=torch.float32))
        return self

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / (self.obs_std + self.eps)

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return 2.0 * (action - self.act_low) / (self.act_high - self.act_low) - 1.0

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return (action + 1.0) * 0.5 * (self.act_high - self.act_low) + self.act_low
