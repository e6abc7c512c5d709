"""In-memory episodes: the common currency between dataset readers/writers, collection and chunk sampling.

An ``Episode`` of T transitions holds (all numpy):

* ``obs``        [T+1, O] float32 -- o_0 .. o_T (the last is the observation after the last action)
* ``actions``    [T, A]   float32 -- raw env actions
* ``rewards``    [T]      float32
* ``terminated`` [T]      bool    -- true only on a transition after which the MDP ended (no bootstrap)
* ``truncated``  [T]      bool    -- time-limit / data-collection cut (bootstrap through it)
* ``success``    [T]      bool    -- the env's ``info['success']`` at that step
* ``images``     {camera: [T+1, H, W, C] uint8} or None -- camera frames aligned with ``obs`` (then ``obs`` is the
  state part of the observation: proprioception, what the policy may see besides the cameras)

This is ManiSkill's trajectory layout (``obs`` has one more row than ``actions``), so one reader serves our files,
ManiSkill's demos and (after conversion) OGBench's npz datasets.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rlft.errors import DatasetError

EPISODE_KEYS = ("obs", "actions", "rewards", "terminated", "truncated", "success")


def image_path(camera: str) -> str:
    """Where a camera's frames sit in an episode group (ManiSkill's layout): ``obs/sensor_data/<camera>/rgb``."""
    return f"obs/sensor_data/{camera}/rgb"


def check_images(images: dict, rows: int, where: str) -> None:
    """Every camera's frames are uint8 [rows, H, W, C] with C in (1, 3, 4); one DatasetError naming the camera."""
    for cam, v in images.items():
        at = f"{where}/{image_path(cam)}"
        if not isinstance(v, np.ndarray) or v.dtype != np.uint8:
            raise DatasetError(f"{at}: images must be uint8 (0-255), got {getattr(v, 'dtype', type(v).__name__)}")
        if v.ndim != 4 or v.shape[0] != rows or v.shape[3] not in (1, 3, 4):
            raise DatasetError(f"{at}: expected shape [{rows}, H, W, C in (1, 3, 4)], got {tuple(v.shape)}")


@dataclasses.dataclass
class Episode:
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    images: dict[str, np.ndarray] | None = None
    signals: dict[str, np.ndarray] | None = None
    """Per-step signals of the expert that made the episode, each [T, ...] float32 (an MPC expert's planned actions,
    predicted cost-to-go, sampled-cost spread); stored as ``signals/<name>`` in the episode's h5 group. A
    ``row_weight`` signal [T] weighs each transition in the algorithms that take weights (``ChunkBatch.weight``)."""

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def validate(self, where: str) -> "Episode":
        """Check shapes, dtypes and finiteness; raise DatasetError naming ``where`` (file/group) and the key."""
        T = len(self)
        if self.actions.ndim != 2:
            raise DatasetError(f"{where}/actions: expected shape [T, action_dim], got {self.actions.shape}")
        if self.obs.ndim != 2 or self.obs.shape[0] != T + 1:
            raise DatasetError(f"{where}/obs: expected shape [T+1={T + 1}, obs_dim], got {self.obs.shape}")
        for k in ("rewards", "terminated", "truncated", "success"):
            v = getattr(self, k)
            if v.shape != (T,):
                raise DatasetError(f"{where}/{k}: expected shape [T={T}], got {v.shape}")
        for k in ("obs", "actions", "rewards"):
            v = getattr(self, k)
            if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
                raise DatasetError(f"{where}/{k}: expected a real numeric dtype, got {v.dtype}")
            if not np.all(np.isfinite(v)):
                bad = np.argwhere(~np.isfinite(v))[0].tolist()
                raise DatasetError(f"{where}/{k}: contains NaN/inf (first at index {bad})")
        if self.images is not None:
            check_images(self.images, T + 1, where)
        for k, v in (self.signals or {}).items():
            if v.shape[:1] != (T,) or not np.all(np.isfinite(v)):
                raise DatasetError(f"{where}/signals/{k}: expected finite values of shape [T={T}, ...], got {v.shape}")
        return self

    @property
    def success_once(self) -> bool:
        return bool(self.success.any())


def plan_confidence_weights(episodes: list[Episode], temperature: float, where: str) -> list[Episode]:
    """The episodes with a ``row_weight`` signal from an MPC expert's confidence: ``w_t = exp(-spread_t / (temperature
    * median spread))`` (``cost_spread``: the std of the sampled plans' costs; small = the planner was sure), scaled
    to mean 1 over all rows. Episodes without ``cost_spread`` raise DatasetError naming ``where``."""
    import dataclasses

    if not temperature > 0:
        raise DatasetError(f"data_weighting_temperature must be > 0, got {temperature}")
    missing = [i for i, e in enumerate(episodes) if not e.signals or "cost_spread" not in e.signals]
    if missing:
        raise DatasetError(
            f"{where}: episode {missing[0]} has no MPC signal 'cost_spread' (collect the data with rlft collect "
            "--mode mpc) -- data_weighting 'plan_confidence' needs it"
        )
    spread = np.concatenate([e.signals["cost_spread"] for e in episodes]).astype(np.float64)
    scale = temperature * max(float(np.median(spread)), 1e-12)
    raw = [np.exp(-np.asarray(e.signals["cost_spread"], np.float64) / scale) for e in episodes]
    mean = float(np.mean(np.concatenate(raw)))
    return [
        dataclasses.replace(e, signals={**e.signals, "row_weight": (w / mean).astype(np.float32)})
        for e, w in zip(episodes, raw)
    ]
