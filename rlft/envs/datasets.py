"""Datasets checked against the env a run trains on (the dataset layer knows no env; this module knows both)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from rlft.data.episodes import Episode
from rlft.data.h5io import load_dataset
from rlft.envs import env_family, same_env_id
from rlft.errors import DatasetError, RlftError


def load_dataset_for_env(
    path: str | os.PathLike, env: dict[str, Any], clip_actions: bool = False
) -> tuple[list[Episode], dict[str, Any]]:
    """``load_dataset`` for training on the env described by ``env`` (``rlft.envs.env_info`` of the run's env:
    ``env_id``, ``action_low``, ``action_high``): also refuse data that were recorded on another environment or whose
    actions lie outside the env's action box.

    * The env id the file records (``env_info.env_id`` of its sidecar or h5 attributes) must name the same task as
      ``env['env_id']`` (``rlft.envs.same_env_id``: OGBench's ``X-singletask-v0`` is its default
      ``X-singletask-taskN-v0``). A file that records none (e.g. an OGBench npz) is accepted; time limits and
      observation stacking are not compared (they are settings of the run, not of the data).
    * Actions may exceed the box by 0.1% of its width (float rounding; data on the edge is normal, e.g. saturating
      oracles). Further out, ``clip_actions=False`` raises a ``DatasetError`` naming the file, the measured range and
      the box; ``clip_actions=True`` clips them into the box and records ``meta['clipped_actions']`` (the fraction of
      action entries changed).
    """
    path = Path(path)
    env_id = str(env["env_id"])
    episodes, meta = load_dataset(path)
    env_meta = meta.get("env_info")
    recorded = env_meta.get("env_id") if isinstance(env_meta, dict) else None
    if recorded is not None and not (isinstance(recorded, str) and same_env_id(recorded, env_id)):
        where = meta.get("meta_file", str(path))
        try:
            env_family(str(recorded))
            known = ""
        except RlftError:
            known = ", not a known environment id"
        raise DatasetError(
            f"{where}: env_info.env_id is {recorded!r}{known}, but this run's env is {env_id!r} "
            f"(env.env_id); train on data recorded on {env_id}, or set env.env_id to the data's env"
        )

    low = np.asarray(env["action_low"], np.float64).reshape(-1)
    high = np.asarray(env["action_high"], np.float64).reshape(-1)
    acts = np.concatenate([ep.actions for ep in episodes])
    if acts.shape[1] != low.shape[0]:
        return episodes, meta  # the caller reports the dim mismatch (it knows the env's dims and obs stacking)
    tol = np.where(np.isfinite(high - low), 1e-3 * (high - low), 0.0)
    lo_d, hi_d = acts.min(axis=0), acts.max(axis=0)
    bad = np.flatnonzero((lo_d < low - tol) | (hi_d > high + tol))
    if len(bad) == 0:
        return episodes, meta
    if not clip_actions:
        dims = "; ".join(f"dim {d}: [{lo_d[d]:.4g}, {hi_d[d]:.4g}] vs [{low[d]:.4g}, {high[d]:.4g}]" for d in bad[:4])
        more = f"; {len(bad) - 4} more dim(s)" if len(bad) > 4 else ""
        raise DatasetError(
            f"{path}: field 'actions' lies outside the action box of {env_id} (measured range vs "
            f"box: {dims}{more}); the data are in other units or of another env: rescale them, or "
            f"set clip_dataset_actions: true to clip them into the box"
        )
    clipped = [dataclasses.replace(ep, actions=np.clip(ep.actions, low, high).astype(np.float32)) for ep in episodes]
    changed = sum(int(np.count_nonzero(c.actions != ep.actions)) for c, ep in zip(clipped, episodes))
    meta["clipped_actions"] = changed / acts.size
    return clipped, meta
