"""OGBench manipulation environments (the ``ogbench`` family of ``rlft.envs.make_env``) and their task geometry.

Environments are created with no download: ``import ogbench`` registers every id with gymnasium, then
``gymnasium.make(id, **kwargs)`` builds it (``ogbench.make_env_and_datasets`` would try to download datasets).

Singletask semantics (OGBench 1.2.2, ``success_timing='pre'``): success, reward and ``terminated`` of step t are
computed from the state *before* action t. For cube tasks ``reward = (#cubes within 0.04 m of their task goal) - #cubes`` and
success = all cubes at their goal. The helpers below recompute exactly that from ``qpos`` (as OGBench's
``relabel_dataset`` does) or from the state observation, so play data collected with random targets (or OGBench's own
npz files) can be labelled with the *task* reward.

State observation layout of ``CubeEnv`` (no goal inside): 19 proprio dims (6 joint pos, 6 joint vel, 3 effector pos
``(p - [0.425, 0, 0]) * 10``, cos/sin effector yaw, 3 * gripper opening, gripper contact) then 9 dims per cube
(``(pos - [0.425, 0, 0]) * 10``, quaternion wxyz, cos/sin yaw). ``qpos``: 14 robot dims then 7 per cube (xyz, wxyz).
"""

from __future__ import annotations

import difflib
import functools
import re
import warnings
from typing import Any, Callable

import gymnasium
import numpy as np

from rlft.errors import EnvError

CUBE_SUCCESS_TOL = 0.04  # metres; OGBench's CubeEnv._compute_successes threshold
XYZ_CENTER = np.array([0.425, 0.0, 0.0])
XYZ_SCALER = 10.0
OBS_PROPRIO_DIM = 19
OBS_PER_CUBE = 9
QPOS_OBJ_START = 14
QPOS_PER_CUBE = 7


def _import_ogbench() -> None:
    """Register OGBench's ids with gymnasium and silence its harmless Box-precision warning.

    CubeEnv.action_space builds a float32 Box from float64 bounds on every access (gymnasium warns); the filter is
    (re)installed on every call because test runners reset warning filters between tests.
    """
    try:
        import ogbench  # noqa: F401  (registers the envs)
    except ImportError as e:  # pragma: no cover - ogbench is a hard dependency
        raise EnvError(f"OGBench is not installed ({e}); `pip install ogbench`") from e
    warnings.filterwarnings("ignore", message=r".*Box (low|high)'s precision lowered.*")


def ogbench_ids() -> list[str]:
    """All gymnasium ids registered by OGBench (state and visual, all domains)."""
    _import_ogbench()
    return sorted(k for k, spec in gymnasium.registry.items() if str(spec.entry_point).startswith("ogbench."))


def is_ogbench_id(env_id: str) -> bool:
    _import_ogbench()
    spec = gymnasium.registry.get(env_id)
    return spec is not None and str(spec.entry_point).startswith("ogbench.")


def make_ogbench_env(env_id: str, **kwargs: Any) -> gymnasium.Env:
    """``gymnasium.make(env_id, **kwargs)`` for an OGBench id, without download and without the passive env checker.

    ``kwargs`` go to the env constructor (e.g. ``max_episode_steps``, ``mode='data_collection'``,
    ``terminate_at_goal=False``). Pixel observations (``visual-*`` ids) only with ``allow_pixels=True`` (the camera
    path, ``rlft.envs.camera``); elsewhere rlft works on state observations.
    """
    _import_ogbench()
    if not is_ogbench_id(env_id):
        raise EnvError(f"'{env_id}' is not an OGBench environment id")
    allow_pixels = kwargs.pop("allow_pixels", False)
    if not allow_pixels and (env_id.startswith("visual-") or kwargs.get("ob_type") == "pixels"):
        raise EnvError(
            f"{env_id}: pixel observations are not supported (rlft uses state observations); "
            f"use '{env_id.removeprefix('visual-')}'"
        )
    kwargs.setdefault("disable_env_checker", True)
    try:
        return gymnasium.make(env_id, **kwargs)
    except TypeError as e:
        raise EnvError(f"{env_id}: cannot create the environment with kwargs {kwargs}: {e}") from e


_DEFAULT_TASK_ID_RE = re.compile(r"^(?P<base>.+-singletask)-v(?P<version>\d+)$")


@functools.lru_cache(maxsize=None)
def canonical_ogbench_id(env_id: str) -> str:
    """The task-explicit form of a single-task id: ``X-singletask-vN`` -> ``X-singletask-taskK-vN`` with OGBench's
    default task K (it differs between domains, so it is read from a constructed env); any other id unchanged."""
    m = _DEFAULT_TASK_ID_RE.match(env_id)
    if m is None or not is_ogbench_id(env_id):
        return env_id
    env = make_ogbench_env(env_id)
    try:
        task = getattr(env.unwrapped, "_reward_task_id", 0)
    finally:
        env.close()
    return f"{m['base']}-task{task}-v{m['version']}" if task else env_id


def close_ids(env_id: str, known: list[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(env_id, known, n=n, cutoff=0.5)


# ---------------------------------------------------------------------------------------------------------------------
# Task geometry (cube domains)
# ---------------------------------------------------------------------------------------------------------------------


def is_cube_env(env: gymnasium.Env) -> bool:
    return hasattr(env.unwrapped, "_num_cubes") and type(env.unwrapped).__name__ == "CubeEnv"


def num_cubes(env: gymnasium.Env) -> int:
    if not is_cube_env(env):
        raise EnvError(f"{_env_name(env)}: not an OGBench cube environment")
    return int(env.unwrapped._num_cubes)


def _env_name(env: gymnasium.Env) -> str:
    spec = getattr(env.unwrapped, "spec", None) or getattr(env, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


def task_goal_xyzs(env: gymnasium.Env) -> np.ndarray:
    """[num_cubes, 3] goal positions of the env's single task (works in 'task' and 'data_collection' mode).

    In 'data_collection' mode OGBench never calls ``set_tasks`` (so ``task_infos`` is missing and the reward task id 0
    is not yet mapped to the default task); we call it here, which only fills those two attributes.
    """
    u = env.unwrapped
    if not is_cube_env(env):
        raise EnvError(f"{_env_name(env)}: task goals are only implemented for OGBench cube environments")
    if getattr(u, "_reward_task_id", None) is None:
        raise EnvError(f"{_env_name(env)}: not a single-task env (use an id like 'cube-single-singletask-v0')")
    if not getattr(u, "task_infos", None) or u._reward_task_id == 0:
        u.set_tasks()
    task_id = int(u._reward_task_id)
    return np.asarray(u.task_infos[task_id - 1]["goal_xyzs"], dtype=np.float64).copy()


def cube_xyzs_from_qpos(qpos: np.ndarray, n_cubes: int) -> np.ndarray:
    """qpos [..., nq] -> cube positions [..., n_cubes, 3]."""
    idx = [QPOS_OBJ_START + i * QPOS_PER_CUBE for i in range(n_cubes)]
    return np.stack([qpos[..., j : j + 3] for j in idx], axis=-2)


def cube_xyzs_from_obs(obs: np.ndarray, n_cubes: int) -> np.ndarray:
    """State observation [..., O] -> cube positions [..., n_cubes, 3] (inverts ``(pos - center) * 10``)."""
    idx = [OBS_PROPRIO_DIM + i * OBS_PER_CUBE for i in range(n_cubes)]
    scaled = np.stack([obs[..., j : j + 3] for j in idx], axis=-2).astype(np.float64)
    return scaled / XYZ_SCALER + XYZ_CENTER


def cube_task_successes(cube_xyzs: np.ndarray, goal_xyzs: np.ndarray, tol: float = CUBE_SUCCESS_TOL) -> np.ndarray:
    """Per-cube success [..., n]: ||x_i - g_i|| <= tol (cube i must reach goal i; singletask has no permutation)."""
    return np.linalg.norm(cube_xyzs - goal_xyzs, axis=-1) <= tol


def cube_task_reward(successes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From per-cube successes [..., n]: reward = sum_i s_i - n (in {-n..0}); success = all_i s_i."""
    n = successes.shape[-1]
    reward = successes.sum(axis=-1).astype(np.float32) - np.float32(n)
    return reward, successes.all(axis=-1)


def current_task_reward(env: gymnasium.Env, goal_xyzs: np.ndarray) -> tuple[float, bool]:
    """Task reward and success of the env's *current* simulator state (call it before stepping = 'pre' timing)."""
    u = env.unwrapped
    xyzs = np.stack([u._data.joint(f"object_joint_{i}").qpos[:3] for i in range(len(goal_xyzs))])
    r, s = cube_task_reward(cube_task_successes(xyzs, goal_xyzs))
    return float(r), bool(s)


def ogbench_task_reward_fn(env_id: str) -> Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """A ``reward_fn`` for ``rlft.data.ogbench_npz``: per-row (state) task reward and success of a cube singletask.

    The returned function maps the npz arrays to ``(rewards [N] float32, success [N] bool)``, computed from ``qpos``
    when present (exactly OGBench's ``relabel_dataset``) else from ``observations``.
    """
    env = make_ogbench_env(env_id)
    try:
        goals = task_goal_xyzs(env)
        n = num_cubes(env)
    finally:
        env.close()

    def reward_fn(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if "qpos" in arrays:
            xyzs = cube_xyzs_from_qpos(np.asarray(arrays["qpos"], dtype=np.float64), n)
        else:
            xyzs = cube_xyzs_from_obs(np.asarray(arrays["observations"]), n)
        return cube_task_reward(cube_task_successes(xyzs, goals))

    reward_fn.env_id = env_id  # type: ignore[attr-defined]
    return reward_fn
