"""Episode datasets in ManiSkill's trajectory layout (HDF5 + JSON sidecar), and ``load_dataset`` for any format.

File layout (``<name>.h5``), one group per episode, as ManiSkill writes it::

    traj_0/obs         [T+1, O] float32   (a *group* here means dict observations: refused, state obs are required)
    traj_0/actions     [T, A]   float32
    traj_0/rewards     [T]      float32
    traj_0/terminated  [T]      bool
    traj_0/truncated   [T]      bool
    traj_0/success     [T]      bool
    traj_1/...

Sidecar ``<name>.json`` (ManiSkill's keys, plus ours)::

    {"env_info": {"env_id", "max_episode_steps", "env_kwargs": {..., "control_mode"}, ...},
     "episodes": [{"episode_id", "episode_seed", "reset_kwargs": {"seed"}, "control_mode", "elapsed_steps",
                   "success", "success_at_end"}],
     "source": {"mode", "action_noise", ..., "rlft_version"}, "write_id": "<uuid>"}

The h5 file's root attributes hold ``env_info``, ``source`` (JSON strings) and the same ``write_id``, so our files are
self-describing even without the sidecar. Writes are atomic: both files go to temporaries, the sidecar is renamed into
place first and the h5 last; a reader only trusts a sidecar whose ``write_id`` matches the h5 (a run killed between the
two renames leaves the old h5 or none, never a torn one).

Older/other ManiSkill files: ``success`` may live at ``info/success``; files with ``dones`` but no
``terminated``/``truncated`` map ``dones`` to ``terminated`` and mark the last step truncated when it is not done.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

import rlft
from rlft.data.episodes import Episode, image_path
from rlft.errors import DatasetError
from rlft.utils import atomic_path

FORMAT_VERSION = 1
_TRAJ_RE = re.compile(r"^traj_(\d+)$")


def sidecar_path(path: str | os.PathLike) -> Path:
    """``data/x.h5`` -> ``data/x.json`` (ManiSkill's convention)."""
    return Path(path).with_suffix(".json")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def write_episodes(
    path: str | os.PathLike,
    episodes: Sequence[Episode],
    env_info: dict[str, Any],
    extra: dict[str, Any] | None = None,
    episode_info: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Write ``episodes`` to ``path`` (h5) and its JSON sidecar, atomically. Returns ``path``.

    Args:
        env_info: at least ``env_id`` and ``max_episode_steps``; ``env_kwargs`` (with ``control_mode``) is added if
            missing; any other keys (obs_dim, action_dim, ...) are kept.
        extra: provenance stored under ``source`` (mode, noise, oracle, seed, ...); ``rlft_version`` is added.
        episode_info: optional per-episode dicts (e.g. ``{"episode_seed": 7}``) merged into the sidecar entries.
    """
    path = Path(path)
    _check_writable(path, episodes, episode_info)
    env_meta = _env_meta_for_write(env_info)
    source = dict(_jsonable(extra or {}))
    source.setdefault("rlft_version", rlft.__version__)
    write_id = uuid.uuid4().hex
    meta = {
        "env_info": env_meta,
        "episodes": _sidecar_entries(episodes, env_meta["env_kwargs"]["control_mode"], episode_info),
        "source": source,
        "write_id": write_id,
        "format_version": FORMAT_VERSION,
    }

    with atomic_path(path) as tmp_h5, atomic_path(sidecar_path(path)) as tmp_json:
        _write_h5(tmp_h5, episodes, env_meta, source, write_id, episode_info)
        tmp_json.write_text(json.dumps(meta, indent=1))
        # leaving the inner context renames the sidecar, then the outer one renames the h5 (the commit point)
    return path


def _check_writable(path: Path, episodes: Sequence[Episode], episode_info: Sequence[dict[str, Any]] | None) -> None:
    """Refuse an empty, inconsistent or invalid set of episodes before anything is written."""
    if not episodes:
        raise DatasetError(f"{path}: refusing to write a dataset with no episodes")
    if episode_info is not None and len(episode_info) != len(episodes):
        raise DatasetError(f"{path}: episode_info has {len(episode_info)} entries for {len(episodes)} episodes")
    for i, ep in enumerate(episodes):
        ep.validate(f"{path}:episode {i}")
    _check_same_dims(episodes, [f"{path}:episode {i}" for i in range(len(episodes))])


def _env_meta_for_write(env_info: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of ``env_info`` with ManiSkill's required keys (env_id, env_kwargs, ...) filled in."""
    env_meta = dict(_jsonable(env_info))
    env_meta.setdefault("env_id", None)
    env_meta.setdefault("max_episode_steps", None)
    env_meta.setdefault("env_kwargs", {})
    env_meta["env_kwargs"].setdefault("obs_mode", "state")
    env_meta["env_kwargs"].setdefault("control_mode", env_meta.get("control_mode"))
    return env_meta


def _sidecar_entries(
    episodes: Sequence[Episode], control_mode: Any, episode_info: Sequence[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The sidecar's per-episode entries (ManiSkill's keys), merged with ``episode_info`` when given."""
    entries = []
    for i, ep in enumerate(episodes):
        e: dict[str, Any] = {
            "episode_id": i,
            "control_mode": control_mode,
            "elapsed_steps": len(ep),
            "success": bool(ep.success.any()),
            "success_at_end": bool(ep.success[-1]) if len(ep) else False,
        }
        if episode_info is not None:
            e.update(_jsonable(dict(episode_info[i])))
            if "episode_seed" in e:
                e.setdefault("reset_kwargs", {"seed": e["episode_seed"]})
        entries.append(e)
    return entries


def _write_h5(
    tmp_h5: Path,
    episodes: Sequence[Episode],
    env_meta: dict[str, Any],
    source: dict[str, Any],
    write_id: str,
    episode_info: Sequence[dict[str, Any]] | None,
) -> None:
    """Write the h5 file: root attributes, then one ``traj_<i>`` group per episode."""
    with h5py.File(tmp_h5, "w") as f:
        f.attrs["env_info"] = json.dumps(env_meta)
        f.attrs["source"] = json.dumps(source)
        f.attrs["write_id"] = write_id
        f.attrs["format_version"] = FORMAT_VERSION
        for i, ep in enumerate(episodes):
            g = f.create_group(f"traj_{i}")
            _write_obs(g, ep)
            g.create_dataset("actions", data=np.asarray(ep.actions, np.float32))
            g.create_dataset("rewards", data=np.asarray(ep.rewards, np.float32))
            g.create_dataset("terminated", data=np.asarray(ep.terminated, bool))
            g.create_dataset("truncated", data=np.asarray(ep.truncated, bool))
            g.create_dataset("success", data=np.asarray(ep.success, bool))
            for name, v in (ep.signals or {}).items():
                g.create_dataset(f"signals/{name}", data=np.asarray(v, np.float32))
            if episode_info is not None and "episode_seed" in episode_info[i]:
                g.attrs["episode_seed"] = int(episode_info[i]["episode_seed"])


def _write_obs(g: h5py.Group, ep: Episode) -> None:
    """State-only episodes: ``obs`` [T+1, O] float32. With cameras, ManiSkill's dict layout: ``obs/state`` plus
    ``obs/sensor_data/<camera>/rgb`` [T+1, H, W, C] uint8, gzip-compressed one frame per chunk."""
    if not ep.images:
        g.create_dataset("obs", data=np.asarray(ep.obs, np.float32))
        return
    g.create_dataset("obs/state", data=np.asarray(ep.obs, np.float32))
    for cam, frames in ep.images.items():
        g.create_dataset(
            image_path(cam), data=frames, chunks=(1, *frames.shape[1:]), compression="gzip", compression_opts=4
        )


def _read_obs_group(node: h5py.Group, where: str) -> tuple[np.ndarray, dict[str, np.ndarray] | None, list[str]]:
    """A dict observation group (ManiSkill's rgb/rgbd layout, or ours): the state vector, the cameras' rgb frames and
    the state's parts in order. The state is ``obs/state`` if present, else ``agent/*`` then ``extra/*`` flattened and
    concatenated in the file's order (as ManiSkill's FlattenRGBDObservationWrapper does; booleans as 0/1). Depth and
    ``sensor_param`` are not read."""
    parts, keys = [], []
    if "state" in node:
        parts, keys = [_read_array(node, "state", f"{where}/obs", "float")], ["state"]
    for grp in () if parts else ("agent", "extra"):
        for k, v in node[grp].items() if grp in node else ():
            if isinstance(v, h5py.Dataset):
                parts.append(_read_array(node[grp], k, f"{where}/obs/{grp}", "float"))  # booleans become 0/1
                keys.append(f"{grp}/{k}")
    if not parts:
        raise DatasetError(f"{where}/obs: a dict observation without 'state', 'agent' or 'extra' ({list(node.keys())})")
    rows = parts[0].shape[0]
    bad = [k for k, p in zip(keys, parts) if p.shape[0] != rows]
    if bad:
        raise DatasetError(f"{where}/obs/{bad[0]}: {rows} rows expected (as obs/{keys[0]})")
    state = np.concatenate([p.reshape(rows, -1) for p in parts], 1).astype(np.float32)
    images = {}
    for cam, grp in node["sensor_data"].items() if "sensor_data" in node else ():
        if isinstance(grp, h5py.Group) and "rgb" in grp:
            images[cam] = np.asarray(grp["rgb"][()])
            if images[cam].dtype != np.uint8:
                raise DatasetError(f"{where}/{image_path(cam)}: images must be uint8 (0-255), got {images[cam].dtype}")
    return state, images or None, keys


def _read_array(g: h5py.Group, key: str, where: str, kind: str) -> np.ndarray:
    """Read ``g[key]`` as numpy; ``kind``: 'float' (real numbers) or 'bool' (bool or integer/float 0/1)."""
    node = g[key]
    if isinstance(node, h5py.Group):
        raise DatasetError(f"{where}/{key}: expected a dataset, found a group")
    arr = node[()]
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DatasetError(f"{where}/{key}: expected a numeric/bool dtype, got {arr.dtype}")
    if kind == "bool":
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise DatasetError(f"{where}/{key}: contains NaN/inf")
        return arr.astype(bool)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise DatasetError(f"{where}/{key}: contains NaN/inf (first at index {bad})")
    return arr.astype(np.float32)


def _read_group(g: h5py.Group, where: str) -> Episode:
    keys = set(g.keys())

    def need(key: str) -> None:
        if key not in keys:
            hint = ""
            if "env_states" in keys:  # a ManiSkill recording without observations/rewards (motion-planning output)
                hint = (
                    "; a raw ManiSkill recording: convert it with `python -m "
                    "mani_skill.trajectory.replay_trajectory --traj-path FILE -o state -c pd_ee_delta_pose "
                    "--record-rewards --save-traj`"
                )
            raise DatasetError(f"{where}: missing key '{key}' (found: {sorted(keys)}){hint}")

    for k in ("obs", "actions", "rewards"):
        need(k)
    images = None
    if isinstance(g["obs"], h5py.Group):
        obs, images, _ = _read_obs_group(g["obs"], where)  # every part checked by _read_array
    else:
        obs = _read_array(g, "obs", where, "float")
    actions = _read_array(g, "actions", where, "float")
    rewards = _read_array(g, "rewards", where, "float")
    T = actions.shape[0] if actions.ndim >= 1 else 0
    if "terminated" in keys and "truncated" in keys:
        terminated = _read_array(g, "terminated", where, "bool")
        truncated = _read_array(g, "truncated", where, "bool")
    elif "dones" in keys:  # older ManiSkill: dones = task-ended flags; a final step that is not done is a time limit
        terminated = _read_array(g, "dones", where, "bool")
        truncated = np.zeros_like(terminated)
        if terminated.ndim == 1 and len(terminated) and not terminated[-1]:
            truncated[-1] = True
    else:
        missing = [k for k in ("terminated", "truncated") if k not in keys]
        raise DatasetError(f"{where}: missing key '{missing[0]}' (and no 'dones'); found: {sorted(keys)}")
    if "success" in keys:
        success = _read_array(g, "success", where, "bool")
    elif "info" in keys and isinstance(g["info"], h5py.Group) and "success" in g["info"]:
        success = _read_array(g["info"], "success", f"{where}/info", "bool")
    else:
        raise DatasetError(f"{where}: missing key 'success' (nor 'info/success'); found: {sorted(keys)}")
    signals = None
    if "signals" in keys and isinstance(g["signals"], h5py.Group):
        signals = {k: _read_array(g["signals"], k, f"{where}/signals", "float") for k in g["signals"]}
    ep = Episode(obs, actions, rewards, terminated, truncated, success, images=images, signals=signals)
    if T == 0:
        raise DatasetError(f"{where}/actions: episode has no transitions")
    return ep.validate(where)


def _check_same_dims(episodes: Sequence[Episode], where: Sequence[str]) -> None:
    """Every episode of one dataset has the first episode's obs and action dims; else a DatasetError naming the
    episode (``where[i]``: file and group) and the field."""
    for key, what in (("obs", "observation"), ("actions", "action")):
        dims = [getattr(ep, key).shape[1] for ep in episodes]
        for i, d in enumerate(dims):
            if d != dims[0]:
                raise DatasetError(
                    f"{where[i]}/{key}: episode {i} has {d}-dim {what}s, but episode 0 ({where[0]}) has "
                    f"{dims[0]}; every episode of a dataset must have the same {what} dim"
                )
    cams = [{c: v.shape[1:] for c, v in (ep.images or {}).items()} for ep in episodes]
    for i, c in enumerate(cams):
        if c != cams[0]:
            raise DatasetError(
                f"{where[i]}/obs/sensor_data: episode {i} has cameras {c}, but episode 0 ({where[0]}) has {cams[0]}; "
                "every episode of a dataset must have the same cameras and image sizes"
            )


def _meta_from_h5(f: h5py.File) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for k in ("env_info", "source"):
        if k in f.attrs:
            try:
                meta[k] = json.loads(f.attrs[k])
            except (TypeError, ValueError):
                pass
    if "write_id" in f.attrs:
        meta["write_id"] = str(f.attrs["write_id"])
    return meta


def read_episodes(path: str | os.PathLike) -> tuple[list[Episode], dict[str, Any]]:
    """Read all ``traj_*`` groups (in index order) of an h5 trajectory file; return (episodes, meta).

    ``meta`` is the JSON sidecar (ManiSkill's or ours) when present and consistent with the h5, else what the h5's own
    attributes hold (plus an ``episodes`` list rebuilt from the data); ``meta['path']`` is the file read,
    ``meta['meta_file']`` the file the metadata came from (the sidecar or the h5).
    Every problem (missing/corrupt file, missing key, wrong shape/dtype, NaN, episodes of different obs/action dims)
    raises ``DatasetError`` naming the file, the group and the key.
    """
    path = Path(path)
    f = _open_h5(path)
    with f:
        names = sorted((int(m.group(1)), k) for k in f.keys() if (m := _TRAJ_RE.match(k)))
        if not names:
            raise DatasetError(f"{path}: no 'traj_<i>' groups found (keys: {sorted(f.keys())[:10]})")
        episodes = [_read_traj(f, path, name) for _, name in names]
        h5_meta = _meta_from_h5(f)
        seeds = [f[name].attrs.get("episode_seed") for _, name in names]
    _check_same_dims(episodes, [f"{path}:{name}" for _, name in names])

    meta = _sidecar_meta(path, h5_meta)
    if meta is None:
        meta = dict(h5_meta)
        meta["meta_file"] = str(path)
        meta["episodes"] = [
            {
                "episode_id": i,
                "elapsed_steps": len(ep),
                "success": bool(ep.success.any()),
                **({"episode_seed": int(s)} if s is not None else {}),
            }
            for i, (ep, s) in enumerate(zip(episodes, seeds))
        ]
    meta["path"] = str(path)
    return episodes, meta


def _open_h5(path: Path) -> h5py.File:
    """Open ``path`` read-only, raising ``DatasetError`` if it is missing, a directory or not HDF5."""
    if not path.exists():
        raise DatasetError(f"{path}: dataset file not found")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected an .h5 file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e})") from e


def _read_traj(f: h5py.File, path: Path, name: str) -> Episode:
    """Read the episode in group ``name`` of ``f``; low-level read errors become ``DatasetError``."""
    node = f[name]
    if not isinstance(node, h5py.Group):
        raise DatasetError(f"{path}:{name}: expected a group, found a dataset")
    try:
        return _read_group(node, f"{path}:{name}")
    except DatasetError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"{path}:{name}: unreadable ({e})") from e


def _sidecar_meta(path: Path, h5_meta: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON sidecar's metadata (with ``meta_file`` set), or None if it is absent or stale (other write_id)."""
    side = sidecar_path(path)
    if not side.exists():
        return None
    try:
        side_meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{side}: sidecar JSON is unreadable ({e})") from e
    stale = "write_id" in h5_meta and side_meta.get("write_id") != h5_meta["write_id"]
    if stale:
        return None
    side_meta["meta_file"] = str(side)
    return side_meta


def load_dataset(path: str | os.PathLike, **kwargs: Any) -> tuple[list[Episode], dict[str, Any]]:
    """Read a dataset by extension: ``.h5``/``.hdf5`` -> ``read_episodes``; ``.npz`` -> OGBench npz reader
    (``kwargs`` such as ``reward_fn`` go to ``rlft.data.ogbench_npz.read_ogbench_npz``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        if kwargs:
            raise DatasetError(f"{path}: options {sorted(kwargs)} only apply to .npz datasets")
        return read_episodes(path)
    if suffix == ".npz":
        from rlft.data.ogbench_npz import read_ogbench_npz

        return read_ogbench_npz(path, **kwargs)
    raise DatasetError(f"{path}: unknown dataset format '{suffix or '(no extension)'}'; expected .h5, .hdf5 or .npz")


def merge_datasets(paths: list[Path], out: Path) -> Path:
    """Concatenate the episodes of several dataset files of one environment into ``out`` (atomically); the sidecar
    lists the sources, and each episode keeps its reset seed (``episode_seed``, where its source recorded one) and
    says which source it came from (``source_index``)."""
    episodes, metas, infos, env_info = [], [], [], None
    for k, p in enumerate(paths):
        eps, meta = read_episodes(p)
        env_info = _check_mergeable(p, meta.get("env_info", {}), env_info, paths[0])
        entries = meta.get("episodes") or [{} for _ in eps]
        episodes += eps
        infos += [
            {"source_index": k, **({"episode_seed": e["episode_seed"]} if "episode_seed" in e else {})} for e in entries
        ]
        metas.append({"path": str(p), "episodes": len(eps), "source": meta.get("source")})
    write_episodes(out, episodes, env_info, extra={"merged_from": metas}, episode_info=infos)
    return out


def _check_mergeable(path: Path, info: dict[str, Any], first: dict[str, Any] | None, first_path: Path) -> dict:
    """The merged file's env_info (the first file's); refuses a file of another env or control mode."""
    if first is None:
        return info
    for key, a, b in (
        ("env_id", info.get("env_id"), first.get("env_id")),
        (
            "control_mode",
            info.get("env_kwargs", {}).get("control_mode"),
            first.get("env_kwargs", {}).get("control_mode"),
        ),
    ):
        if a is not None and b is not None and a != b:
            raise DatasetError(f"{path}: {key} {a!r}, but {first_path} has {b!r}; merge datasets of one environment")
    return first
