"""Observations with cameras: ``Obs(state, images)``.

A state-only env's observation is a flat float32 vector, as everywhere in rlft. An env with cameras returns an
``Obs``: ``state`` the flat float32 vector of what the robot may know besides the cameras (proprioception; with an
observation history the last To of them stacked, oldest first) and ``images`` {camera: uint8 frames}, [H, W, C] from
the simulator, [To, H, W, C] after the history wrapper (``rlft.envs.wrappers.ObsHistory``). Batches of them stack to
[B, ...] (``stack_obs``). ``Policy.act`` takes either kind.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Obs(NamedTuple):
    state: Any  # [..., S] float32 (numpy or torch)
    images: dict[str, Any]  # {camera: [..., H, W, C] uint8}


def stack_obs(items: list) -> Any:
    """Stack per-env observations into a batch: flat vectors to [B, O], ``Obs`` to ``Obs([B, S], {cam: [B, ...]})``."""
    if items and isinstance(items[0], Obs):
        return Obs(
            np.stack([o.state for o in items]), {c: np.stack([o.images[c] for o in items]) for c in items[0].images}
        )
    return np.stack(items)
