"""Offline/online batch mixing (RLPD-style symmetric sampling).

Each batch of B holds exactly ``round(offline_ratio * B)`` offline chunks (from the ``ChunkDataset``) followed by
``B - round(offline_ratio * B)`` online chunks (from the ``ReplayBuffer``). RLPD uses 0.5; 0 means online data only.
While the replay buffer is still empty every row comes from the offline data.
"""

from __future__ import annotations

import torch

from rlft.data.batch import ChunkBatch
from rlft.data.dataset import ChunkDataset
from rlft.data.replay import ReplayBuffer
from rlft.errors import ConfigError, TrainingError


class MixedSampler:
    def __init__(self, offline: ChunkDataset | None, online: ReplayBuffer, offline_ratio: float):
        if not 0.0 <= offline_ratio <= 1.0:
            raise ConfigError(f"offline_ratio must be in [0, 1], got {offline_ratio}")
        if offline_ratio > 0 and offline is None:
            raise ConfigError(
                f"offline_ratio={offline_ratio} needs an offline dataset, but none was given "
                "(set a dataset path or offline_ratio: 0)"
            )
        if offline is not None and (
            offline.obs_dim != online.obs_dim
            or offline.act_horizon != online.act_horizon
            or offline.action_dim != online.action_dim
        ):
            raise ConfigError(
                f"offline dataset (obs_dim={offline.obs_dim}, act_horizon={offline.act_horizon}, "
                f"action_dim={offline.action_dim}) and replay buffer (obs_dim={online.obs_dim}, "
                f"act_horizon={online.act_horizon}, action_dim={online.action_dim}) do not match"
            )
        self.offline = offline
        self.online = online
        self.offline_ratio = float(offline_ratio)

    def split(self, batch_size: int) -> tuple[int, int]:
        """(offline rows, online rows) of a batch of ``batch_size`` given the current replay contents."""
        if len(self.online) == 0:
            if self.offline is None:
                raise TrainingError("nothing to sample: the replay buffer is empty and there is no offline dataset")
            return batch_size, 0
        n_off = int(round(self.offline_ratio * batch_size))
        return n_off, batch_size - n_off

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ChunkBatch:
        n_off, n_on = self.split(batch_size)
        parts = []
        if n_off > 0:
            parts.append(self.offline.sample(n_off, generator))
        if n_on > 0:
            parts.append(self.online.sample(n_on, generator))
        return parts[0] if len(parts) == 1 else ChunkBatch.cat(parts)
