"""OGBench ``.npz`` datasets <-> Episodes.

Two layouts exist (see ``ogbench.utils.load_dataset``):

* **raw** (the files OGBench ships and its generator writes): per episode of T transitions, T+1 rows of
  ``observations`` [N, O], ``actions`` [N, A] and ``terminals`` [N] (1 on the episode's last row), plus ``qpos``,
  ``qvel`` (``button_states``). The last row's action has no next observation and is dropped, so an episode is
  ``obs = rows[s..e]``, ``actions = rows[s..e-1]``. Rewards are absent: single-task rewards come from
  ``relabel_dataset`` in OGBench; here from a ``reward_fn`` (e.g. ``rlft.envs.ogbench_env.ogbench_task_reward_fn``).
* **transitions** (what ``load_dataset`` returns and what QC/FQL-style code saves): ``observations``,
  ``next_observations``, ``actions`` [N] transitions, ``terminals`` = 1 on each episode's last transition, and for
  single-task data ``rewards`` and ``masks`` (``masks = 0`` on transitions from a success state).

Reading conventions: ``masks`` present -> ``terminated = (masks == 0)`` and ``success = (masks == 0)`` (OGBench's
single-task semantics; such a terminated step may sit inside an episode). Without masks, ``terminated`` is False
(bootstrap through; ``terminal_on_success=True`` reproduces OGBench's ``masks``) and ``success`` comes from the
``reward_fn`` or a ``success`` array. ``truncated`` is True on each episode's last transition unless it terminated.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from rlft.data.episodes import Episode
from rlft.errors import DatasetError
from rlft.utils import atomic_path

RewardFn = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DatasetError(f"{path}: dataset file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise DatasetError(f"{path}: not an .npz archive")
            return {k: f[k] for k in f.files}
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DatasetError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e
    except Exception as e:  # e.g. UnpicklingError on garbage bytes
        raise DatasetError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e


def _check(path: Path, arrays: dict[str, np.ndarray], key: str, ndim: int, n: int | None, finite: bool = True):
    a = arrays[key]
    if a.dtype.kind not in "biuf":
        raise DatasetError(f"{path}:{key}: expected a numeric dtype, got {a.dtype}")
    if a.ndim != ndim:
        raise DatasetError(f"{path}:{key}: expected {ndim} dimensions, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise DatasetError(f"{path}:{key}: expected {n} rows (as 'observations'), got shape {a.shape}")
    if finite and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0].tolist()
        raise DatasetError(f"{path}:{key}: contains NaN/inf (first at index {bad})")


def read_ogbench_npz(
    path: str | os.PathLike, reward_fn: RewardFn | None = None, terminal_on_success: bool = False
) -> tuple[list[Episode], dict[str, Any]]:
    """Read an OGBench npz (either layout) into Episodes; return (episodes, meta).

    Args:
        reward_fn: maps the file's arrays (per row) to ``(rewards [N], success [N] bool)``; required when the file has
            no ``rewards`` (goal-conditioned/raw files), ignored otherwise.
        terminal_on_success: without ``masks``, mark transitions from success states terminated (OGBench's masks).
    """
    path = Path(path)
    arrays = _load_npz(path)
    N, layout = _validate_arrays(path, arrays)

    obs = arrays["observations"].astype(np.float32, copy=False)
    actions = arrays["actions"].astype(np.float32, copy=False)
    ends = np.flatnonzero(arrays["terminals"] > 0.5)
    if len(ends) == 0 or ends[-1] != N - 1:
        raise DatasetError(
            f"{path}:terminals: the last row ({N - 1}) does not end an episode "
            f"({len(ends)} episode ends found); the file is truncated or not in OGBench's layout"
        )

    rewards, success, reward_source = _rewards_and_success(path, arrays, N, reward_fn)
    if "masks" in arrays:
        terminated = arrays["masks"] < 0.5
    elif terminal_on_success:
        terminated = success.copy()
    else:
        terminated = np.zeros(N, bool)

    episodes, skipped = _split_episodes(path, arrays, layout, ends, obs, actions, rewards, terminated, success)
    meta = {
        "path": str(path),
        "format": "ogbench_npz",
        "layout": layout,
        "reward_source": reward_source,
        "skipped_empty_episodes": skipped,
        "env_info": {"env_id": getattr(reward_fn, "env_id", None)},
        "extra_keys": sorted(
            set(arrays) - {"observations", "actions", "terminals", "next_observations", "rewards", "masks", "success"}
        ),
    }
    return episodes, meta


def _validate_arrays(path: Path, arrays: dict[str, np.ndarray]) -> tuple[int, Literal["raw", "transitions"]]:
    """Check the required keys, dtypes and shapes; return (number of rows N, layout)."""
    for key in ("observations", "actions", "terminals"):
        if key not in arrays:
            raise DatasetError(f"{path}: missing key '{key}' (found: {sorted(arrays)})")
    _check(path, arrays, "observations", 2, None)
    N = arrays["observations"].shape[0]
    if N == 0:
        raise DatasetError(f"{path}:observations: the dataset is empty")
    _check(path, arrays, "actions", 2, N)
    _check(path, arrays, "terminals", 1, N)
    layout: Literal["raw", "transitions"] = "transitions" if "next_observations" in arrays else "raw"
    if layout == "transitions":
        _check(path, arrays, "next_observations", 2, N)
        if arrays["next_observations"].shape != arrays["observations"].shape:
            raise DatasetError(
                f"{path}:next_observations: shape {arrays['next_observations'].shape} differs from "
                f"observations {arrays['observations'].shape}"
            )
    for key in ("rewards", "masks", "success"):
        if key in arrays:
            _check(path, arrays, key, 1, N)
    return N, layout


def _rewards_and_success(
    path: Path, arrays: dict[str, np.ndarray], N: int, reward_fn: RewardFn | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-row (rewards, success, reward_source): from the file's arrays if it has rewards, else from ``reward_fn``."""
    if "rewards" in arrays:
        rewards = arrays["rewards"].astype(np.float32)
        reward_source = "file"
        if "success" in arrays:
            success = arrays["success"] > 0.5
        elif "masks" in arrays:
            success = arrays["masks"] < 0.5
        else:
            success = np.zeros(N, bool)
    elif reward_fn is not None:
        out = reward_fn(arrays)
        rewards, success = np.asarray(out[0], np.float32), np.asarray(out[1], bool)
        if rewards.shape != (N,) or success.shape != (N,):
            raise DatasetError(f"{path}: reward_fn returned shapes {rewards.shape}, {success.shape}; expected ({N},)")
        reward_source = f"reward_fn({getattr(reward_fn, 'env_id', getattr(reward_fn, '__name__', '?'))})"
    else:
        raise DatasetError(
            f"{path}: no 'rewards' array (a goal-conditioned/raw OGBench file); pass reward_fn, e.g. "
            "rlft.envs.ogbench_env.ogbench_task_reward_fn('cube-double-singletask-v0')"
        )
    return rewards, success, reward_source


def _split_episodes(
    path: Path,
    arrays: dict[str, np.ndarray],
    layout: Literal["raw", "transitions"],
    ends: np.ndarray,
    obs: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminated: np.ndarray,
    success: np.ndarray,
) -> tuple[list[Episode], int]:
    """Cut the per-row arrays into Episodes at ``ends``; return (episodes, number of empty episodes skipped)."""
    episodes: list[Episode] = []
    skipped = 0
    start = 0
    for e in ends:
        if layout == "raw":
            sl, T = slice(start, e), e - start
            ep_obs = obs[start : e + 1]
        else:
            sl, T = slice(start, e + 1), e + 1 - start
            ep_obs = np.concatenate([obs[start : e + 1], arrays["next_observations"][e : e + 1].astype(np.float32)])
        if T < 1:
            skipped += 1
            start = e + 1
            continue
        trunc = np.zeros(T, bool)
        term = terminated[sl].copy()
        trunc[-1] = not term[-1]
        ep = Episode(
            obs=ep_obs,
            actions=actions[sl],
            rewards=rewards[sl],
            terminated=term,
            truncated=trunc,
            success=success[sl].copy(),
        )
        episodes.append(ep.validate(f"{path}:episode {len(episodes)} (rows {start}..{e})"))
        start = e + 1
    return episodes, skipped


def write_ogbench_npz(
    path: str | os.PathLike, episodes: Sequence[Episode], layout: Literal["raw", "transitions"] = "raw"
) -> Path:
    """Write Episodes as an OGBench npz, atomically.

    ``raw``: OGBench's shipped layout (T+1 rows per episode; the last row's action, which OGBench's loader drops, is
    written as zeros; no rewards: like OGBench's own files). ``transitions``: ``load_dataset``'s layout with
    ``next_observations``, ``rewards``, ``masks = 1 - terminated``, ``terminals`` on each episode's last transition and
    an extra ``success`` array (ignored by OGBench's loader).
    """
    path = Path(path)
    if not episodes:
        raise DatasetError(f"{path}: refusing to write a dataset with no episodes")
    if layout == "raw":
        arrays = {
            "observations": np.concatenate([ep.obs for ep in episodes]).astype(np.float32),
            "actions": np.concatenate(
                [np.concatenate([ep.actions, np.zeros_like(ep.actions[:1])]) for ep in episodes]
            ).astype(np.float32),
            "terminals": np.concatenate([np.arange(len(ep) + 1) == len(ep) for ep in episodes]),
        }
    elif layout == "transitions":
        arrays = {
            "observations": np.concatenate([ep.obs[:-1] for ep in episodes]).astype(np.float32),
            "next_observations": np.concatenate([ep.obs[1:] for ep in episodes]).astype(np.float32),
            "actions": np.concatenate([ep.actions for ep in episodes]).astype(np.float32),
            "rewards": np.concatenate([ep.rewards for ep in episodes]).astype(np.float32),
            "masks": np.concatenate([1.0 - ep.terminated for ep in episodes]).astype(np.float32),
            "success": np.concatenate([ep.success for ep in episodes]).astype(bool),
            "terminals": np.concatenate([np.arange(len(ep)) == len(ep) - 1 for ep in episodes]).astype(np.float32),
        }
    else:
        raise DatasetError(f"{path}: unknown npz layout {layout!r}; expected 'raw' or 'transitions'")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path
