"""Environments: ``make_env(env_id)`` dispatches on the id's *family*; wrappers; expert sources.

A family is a small record (name, id matcher, constructor, id lister) in ``ENV_FAMILIES``. Callers never branch on the
simulator. Two families ship: ``ogbench`` (OGBench cube/puzzle/scene tasks, MuJoCo) and ``maniskill`` (ManiSkill3
tasks such as ``LiftPegUpright-v1``, state observations, ``pd_ee_delta_pose``; needs the ``maniskill`` extra, see
``rlft.envs.maniskill_env``).

``make_env`` returns a gymnasium env whose observations are flat float32 vectors (``ObsHistory``; with
``obs_horizon > 1`` the last To observations are stacked) and whose actions are in [-1, 1] (true for OGBench).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import gymnasium
import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering (camera observations, videos) unless the user chose

from rlft.envs import camera, maniskill_env, ogbench_env  # noqa: E402
from rlft.envs.wrappers import ChunkExecutor, ObsHistory
from rlft.errors import EnvError


@dataclasses.dataclass(frozen=True)
class EnvFamily:
    name: str
    matches: Callable[[str], bool]  # does this family own the id?
    make: Callable[..., gymnasium.Env]  # (env_id, **kwargs) -> env (no rlft wrappers)
    known_ids: Callable[[], list[str]]  # for "did you mean" messages
    example: str  # one id shown in error messages
    prepare: Callable[[], None] | None = None  # once per process before spawning env workers (they inherit its env)
    make_gpu_vector: Callable[..., Any] | None = None  # (env_id, num_envs, **kwargs) -> GPU-parallel vector env
    eval_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Constructor kwargs for evaluation envs that make each episode a function of its seed alone, whatever the
    env ran before (so one policy on one set of seeds gets one score)."""


ENV_FAMILIES: list[EnvFamily] = [
    EnvFamily(
        name="ogbench",
        matches=ogbench_env.is_ogbench_id,
        make=camera.make_ogbench_any,
        known_ids=ogbench_env.ogbench_ids,
        example="cube-double-singletask-v0",
    ),
    EnvFamily(
        name="maniskill",
        matches=maniskill_env.is_maniskill_id,
        make=maniskill_env.make_maniskill_env,
        known_ids=maniskill_env.maniskill_ids,
        example="LiftPegUpright-v1",
        prepare=maniskill_env.prepare_workers,
        make_gpu_vector=maniskill_env.make_maniskill_gpu_vector_env,
        # PhysX keeps contact pairs (and their cached impulses) of bodies that a reset only moves, so an episode's
        # physics depends on the one before it; ManiSkill rebuilding the scene at every reset removes that.
        eval_kwargs={"reconfiguration_freq": 1},
    ),
]


def env_family(env_id: str) -> EnvFamily:
    """The family owning ``env_id``; ``EnvError`` naming the id, close matches and the known families otherwise."""
    for fam in ENV_FAMILIES:
        if fam.matches(env_id):
            return fam
    known: list[str] = []
    for fam in ENV_FAMILIES:
        known.extend(fam.known_ids())
    close = ogbench_env.close_ids(env_id, known)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    fams = "; ".join(f"{f.name} (e.g. '{f.example}')" for f in ENV_FAMILIES)
    raise EnvError(f"unknown environment id '{env_id}'.{hint} Known families: {fams}.")


def same_env_id(a: str, b: str) -> bool:
    """Whether two env ids name the same task: equal, or OGBench's ``X-singletask-v0`` and its default task's
    ``X-singletask-taskN-v0``. Time limits and observation stacking are settings of a run, not part of the id."""
    if a == b:
        return True
    return ogbench_env.canonical_ogbench_id(a) == ogbench_env.canonical_ogbench_id(b)


def make_env(env_id: str, seed: int | None = None, obs_horizon: int = 1, **kwargs: Any) -> gymnasium.Env:
    """Create ``env_id`` (no downloads), wrapped for rlft.

    Args:
        env_id: e.g. ``cube-single-singletask-v0``, ``cube-double-singletask-task3-v0``, any OGBench state id.
        seed: if given, the env is reset once with this seed (and its action space seeded), so later plain
            ``reset()`` calls continue a deterministic stream.
        obs_horizon: number of stacked observations (To); the observation is flat [To * obs_dim].
        **kwargs: passed to the simulator's constructor (e.g. ``max_episode_steps=50``, ``mode='data_collection'``).
    """
    fam = env_family(env_id)
    env = fam.make(env_id, **kwargs)
    env = ObsHistory(env, obs_horizon)
    if seed is not None:
        env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
    return env


def make_vector_env(env_id: str, num_envs: int, obs_horizon: int = 1, backend: str = "auto", **kwargs: Any):
    """``num_envs`` copies of ``make_env(env_id, ...)`` stepped in parallel.

    ``backend``: ``"async"`` -- gymnasium ``AsyncVectorEnv`` (one process per env, spawn; numpy in/out), the CPU path
    for every family; ``"gpu"`` -- ManiSkill's GPU simulation, all envs in one process on the GPU with torch tensors in
    and out (``maniskill_env.make_maniskill_gpu_vector_env``; untested here: no GPU); ``"auto"`` picks ``"gpu"`` for
    a ManiSkill id when CUDA is available, else ``"async"``.
    """
    if backend not in ("auto", "async", "gpu"):
        raise EnvError(f"backend must be 'auto', 'async' or 'gpu', got {backend!r}")
    fam = env_family(env_id)
    if backend == "auto":
        import torch

        backend = "gpu" if fam.make_gpu_vector is not None and torch.cuda.is_available() else "async"
    if backend == "gpu":
        if fam.make_gpu_vector is None:
            raise EnvError(f"{env_id}: the {fam.name} family has no GPU-parallel simulator")
        if obs_horizon != 1:
            raise EnvError("obs_horizon > 1 is not implemented for the GPU vector env")
        return fam.make_gpu_vector(env_id, num_envs, **kwargs)
    if fam.prepare is not None:  # e.g. build ManiSkill's Vulkan layer once, so the workers inherit the environment
        fam.prepare()
    fns = [functools.partial(make_env, env_id, obs_horizon=obs_horizon, **kwargs) for _ in range(int(num_envs))]
    return gymnasium.vector.AsyncVectorEnv(fns, context="spawn")


def find_max_episode_steps(env: gymnasium.Env) -> int | None:
    """The time limit of the first ``TimeLimit`` wrapper in the chain (None if there is none)."""
    e: Any = env
    while isinstance(e, gymnasium.Wrapper):
        if isinstance(e, gymnasium.wrappers.TimeLimit):
            return int(e._max_episode_steps)
        e = e.env
    spec = getattr(env.unwrapped, "spec", None)
    return None if spec is None or spec.max_episode_steps is None else int(spec.max_episode_steps)


def env_info(env: gymnasium.Env) -> dict[str, Any]:
    """obs_dim (of the state part, with cameras), action_dim, action low/high (lists), max_episode_steps, env_id, and
    obs_horizon if stacked, image_shapes {camera: [To, H, W, C]} with cameras."""
    obs_space, act_space = env.observation_space, env.action_space
    spec = env.unwrapped.spec
    info: dict[str, Any] = {
        "env_id": spec.id if spec is not None else type(env.unwrapped).__name__,
        "obs_dim": int(np.prod(obs_space.shape)),
        "action_dim": int(act_space.shape[-1]),
        "action_low": np.asarray(act_space.low, np.float64).reshape(-1, act_space.shape[-1])[0].tolist(),
        "action_high": np.asarray(act_space.high, np.float64).reshape(-1, act_space.shape[-1])[0].tolist(),
        "max_episode_steps": find_max_episode_steps(env),
    }
    e: Any = env
    while isinstance(e, gymnasium.Wrapper):
        if isinstance(e, ObsHistory):
            info["obs_horizon"] = e.obs_horizon
            if e.image_shapes:
                info["image_shapes"] = {c: list(s) for c, s in e.image_shapes.items()}
        if isinstance(e, ChunkExecutor):
            info["act_horizon"] = e.act_horizon
        e = e.env
    return info


__all__ = [
    "ENV_FAMILIES",
    "ChunkExecutor",
    "EnvFamily",
    "ObsHistory",
    "env_family",
    "env_info",
    "find_max_episode_steps",
    "make_env",
    "make_vector_env",
    "same_env_id",
]
