"""ManiSkill3 tasks (the ``maniskill`` family of ``rlft.envs.make_env``): state observations, pd_ee_delta_pose.

Install with ``pip install -e ".[maniskill]"`` (mani_skill 3.0.1, sapien 3.0.3, mplib 0.1.1, numpy<2). No asset is
downloaded for the tasks below: the Panda robot and the table scene ship in the mani_skill wheel, the objects are
primitives (verified with the network switched off). ``make_maniskill_env`` refuses a task whose assets are missing
instead of letting ManiSkill prompt for a download.

CPU (this project's machines): ``sim_backend="physx_cpu"``, one simulated scene per env object (``num_envs=1``); several
such envs can live in one process (rlft's evaluator runs a few in lock step), and processes parallelise them
(``make_vector_env`` -> gymnasium ``AsyncVectorEnv``; ``rlft collect``/``eval`` worker pools). Before the first env is
created ``rlft.envs.vk_layer.ensure_vulkan_for_sapien()`` enables a tiny Vulkan layer so SAPIEN starts without a GPU.

GPU: ``make_maniskill_gpu_vector_env`` uses ManiSkill's documented GPU API (``sim_backend="physx_cuda"``,
``num_envs=N``, ``ManiSkillVectorEnv``; observations, rewards and infos are torch tensors on the GPU end to end).
It is selected by ``rlft.envs.make_vector_env`` when CUDA is available. NOT TESTED in this project's CI (no GPU).

Episode limits (``MANISKILL_TASKS``) are rlft's, chosen from the motion planner's demonstrations, not ManiSkill's
defaults (50 steps for LiftPegUpright/PickCube/PushCube, 100 for PegInsertionSide), tuned for fast RL policies:
the planner's LiftPegUpright demos reach success at step 160-175, so 50 steps would cut every demonstration.
Episodes terminate at success (ManiSkill's ``terminated = success | fail``), as OGBench tasks do; ``info['success']``
is the task's success flag, so evaluation reports ``success_once``/``success_at_end`` exactly as for OGBench.
Rewards: ManiSkill's ``normalized_dense`` (its default; in [0, 1] per step, 1 on success) minus 1, i.e. in [-1, 0]
with 0 on success (``REWARD_OFFSETS``; ``sparse`` becomes -1 per step and 0 on success, OGBench's convention). The
shift matters because episodes terminate at success: with ManiSkill's raw rewards a value learner earns more by
hovering just short of success (about 0.7 per step until the time limit, bootstrapped through truncation) than by
succeeding (1, then nothing), so every RL stage learns to avoid success. With rewards <= 0 the terminal state is
the best state, and Q lies in [-1 / (1 - gamma), 0]. Motion-planned demos are written with the same shift.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from typing import Any

import gymnasium
import numpy as np

from rlft.errors import EnvError

INSTALL_HINT = 'pip install -e ".[maniskill]"  (mani_skill 3.0.1 with numpy<2; see docs/guide.md, ManiSkill3)'
DEFAULT_CONTROL_MODE = "pd_ee_delta_pose"
DEFAULT_REWARD_MODE = "normalized_dense"
REWARD_OFFSETS = {"normalized_dense": -1.0, "sparse": -1.0}
"""Added to ManiSkill's per-step reward (see the module docstring); reward modes not listed are passed through."""
CPU_BACKENDS = ("physx_cpu", "cpu")


@dataclasses.dataclass(frozen=True)
class ManiSkillTask:
    max_episode_steps: int
    """rlft's time limit (transitions)."""
    why: str
    """How the limit was chosen."""


MANISKILL_TASKS: dict[str, ManiSkillTask] = {
    "LiftPegUpright-v1": ManiSkillTask(200, "motion-planned demos succeed at step 160-175 (ManiSkill default: 50)"),
    "PickCube-v1": ManiSkillTask(100, "motion-planned demos take 50-86 steps (ManiSkill default: 50)"),
    "PushCube-v1": ManiSkillTask(100, "motion-planned demos take 64-74 steps (ManiSkill default: 50)"),
    "PegInsertionSide-v1": ManiSkillTask(200, "motion-planned demos take 107-178 steps (ManiSkill default: 100)"),
}
"""Tasks rlft supports and tests the motion-planned collection on (any other registered ManiSkill id also works in
``make_env``, with ManiSkill's own time limit)."""

_ID_RE = re.compile(r"^[A-Z][A-Za-z0-9]*-v\d+$")


def maniskill_installed() -> bool:
    return importlib.util.find_spec("mani_skill") is not None


def _import_maniskill():
    """Prepare Vulkan (CPU machines), then import ManiSkill's task registry."""
    if not maniskill_installed():
        raise EnvError(f"ManiSkill is not installed; {INSTALL_HINT}")
    from rlft.envs.vk_layer import ensure_vulkan_for_sapien

    ensure_vulkan_for_sapien()
    import mani_skill.envs  # noqa: F401  (registers the tasks)
    from mani_skill.utils.registration import REGISTERED_ENVS

    return REGISTERED_ENVS


def is_maniskill_id(env_id: str) -> bool:
    """A supported task, or (when mani_skill is installed) any id in ManiSkill's registry."""
    if env_id in MANISKILL_TASKS:
        return True
    if not _ID_RE.match(env_id) or not maniskill_installed():
        return False
    return env_id in _import_maniskill()


def maniskill_ids() -> list[str]:
    return sorted(MANISKILL_TASKS)


def default_max_episode_steps(env_id: str) -> int | None:
    task = MANISKILL_TASKS.get(env_id)
    return task.max_episode_steps if task is not None else None


def _check_assets(env_id: str, registry) -> None:
    spec = registry.get(env_id)
    if spec is None:
        raise EnvError(f"'{env_id}' is not a ManiSkill task id (supported: {', '.join(maniskill_ids())})")
    ids = spec.asset_download_ids or []
    if ids:
        from mani_skill.utils import assets

        missing = [a for a in ids if a not in assets.DATA_GROUPS and not assets.is_data_source_downloaded(a)]
        missing += [
            a
            for a in ids
            if a in assets.DATA_GROUPS
            and not all(
                assets.is_data_source_downloaded(s) for s in assets.expand_data_group_into_individual_data_source_ids(a)
            )
        ]
        if missing:
            raise EnvError(
                f"{env_id} needs ManiSkill assets that are not downloaded ({', '.join(missing)}); rlft does "
                f"not download at run time: `python -m mani_skill.utils.download_asset {env_id}` first, or "
                f"use one of {', '.join(maniskill_ids())}"
            )


class FreshResetContacts(gymnasium.Wrapper):
    """Makes a CPU ManiSkill env's reset observation and info a function of the reset seed (or state) alone.

    PhysX reports the contacts of the last simulation step until the next one, and ManiSkill's ``reset`` poses the
    scene without stepping it. So every contact-derived value in the reset observation and info is the previous
    episode's last one: PickCube-v1's ``is_grasped`` (an observation entry) reads 1 after an episode that ended
    holding the cube, 0 in a fresh env. The same policy on the same seeds then scores differently in an env that
    ran other episodes before, and motion-planned demos replayed back to back start with the stale flag. After
    ManiSkill's reset this wrapper runs one physics step at the reset configuration (which refreshes the contact
    list), restores the simulator state it had saved, and recomputes the info and observation. The episode then
    starts from exactly ManiSkill's reset state, with the contacts of that state. Cost: one physics step per reset.
    """

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        base = self.env.unwrapped
        state = base.get_state_dict()
        base.scene.px.step()
        base.set_state_dict(state)
        fresh = base.get_info()
        fresh["reconfigure"] = info.get("reconfigure", False)
        obs = base.get_obs(fresh)
        base._last_obs = obs
        return obs, fresh


def make_maniskill_env(
    env_id: str,
    max_episode_steps: int | None = None,
    control_mode: str = DEFAULT_CONTROL_MODE,
    reward_mode: str = DEFAULT_REWARD_MODE,
    obs_mode: str = "state",
    sim_backend: str = "physx_cpu",
    **kwargs: Any,
) -> gymnasium.Env:
    """One CPU-simulated ManiSkill env with the plain gymnasium API (numpy, unbatched) and rlft's time limit.

    ``kwargs`` go to ManiSkill's constructor (e.g. ``robot_uids``). Only state observations are supported.
    """
    if obs_mode != "state":
        raise EnvError(
            f"{env_id}: obs_mode={obs_mode!r} is not supported (rlft uses state observations; camera "
            "images also need a real GPU Vulkan device)"
        )
    if sim_backend not in CPU_BACKENDS:
        raise EnvError(
            f"{env_id}: sim_backend={sim_backend!r}: make_env builds one CPU env; for the GPU simulator use "
            "rlft.envs.make_vector_env (many envs in one GPU scene)"
        )
    registry = _import_maniskill()
    _check_assets(env_id, registry)
    from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper

    limit = max_episode_steps or default_max_episode_steps(env_id) or registry[env_id].max_episode_steps
    kwargs.setdefault("render_backend", "none")  # no camera: the CPU Vulkan device cannot render reliably
    try:
        env = gymnasium.make(
            env_id,
            obs_mode=obs_mode,
            control_mode=control_mode,
            reward_mode=reward_mode,
            sim_backend="physx_cpu",
            max_episode_steps=limit,
            **kwargs,
        )
    except (TypeError, AssertionError, NotImplementedError) as e:
        raise EnvError(
            f"{env_id}: cannot create the environment (control_mode={control_mode!r}, "
            f"reward_mode={reward_mode!r}, kwargs {kwargs}): {e}"
        ) from e
    except RuntimeError as e:
        raise EnvError(
            f"{env_id}: SAPIEN could not start ({e}); on a CPU machine install "
            "`apt-get install libvulkan1 mesa-vulkan-drivers libvulkan-dev gcc` (rlft builds a small Vulkan "
            "layer, see rlft/envs/vk_layer)"
        ) from e
    env = CPUGymWrapper(FreshResetContacts(env))  # numpy in/out, no batch dimension
    offset = REWARD_OFFSETS.get(reward_mode, 0.0)
    if offset:
        env = gymnasium.wrappers.TransformReward(env, lambda r: float(r) + offset)  # success is the best state
    env = gymnasium.wrappers.TimeLimit(env, limit)  # the same limit as ManiSkill's own; rlft reads it from here
    act = env.action_space
    if not (np.allclose(act.low, -1.0) and np.allclose(act.high, 1.0)):
        env = gymnasium.wrappers.RescaleAction(env, -1.0, 1.0)  # rlft policies act in [-1, 1]
    return env


# ---------------------------------------------------------------------------------------------------------------------
# GPU path (ManiSkill's documented GPU-parallel API). NOT TESTED HERE: this project's machines and CI have no GPU.
# ---------------------------------------------------------------------------------------------------------------------


def make_maniskill_gpu_vector_env(
    env_id: str,
    num_envs: int,
    max_episode_steps: int | None = None,
    control_mode: str = DEFAULT_CONTROL_MODE,
    reward_mode: str = DEFAULT_REWARD_MODE,
    **kwargs: Any,
):
    """``num_envs`` parallel scenes in one GPU simulation (``sim_backend="physx_cuda"``), wrapped in ManiSkill's
    ``ManiSkillVectorEnv`` (auto-reset, terminate at success): ``reset``/``step`` take and return torch tensors on the
    GPU, batched [num_envs, ...]; ``info['success']`` is a bool tensor, and with ``record_metrics`` the final infos
    carry ``episode['success_once']``. Untested in this project (no GPU); the CPU path is ``make_maniskill_env``."""
    registry = _import_maniskill()
    _check_assets(env_id, registry)
    from mani_skill.vector.wrappers.gymnasium import ManiSkillVectorEnv

    limit = max_episode_steps or default_max_episode_steps(env_id) or registry[env_id].max_episode_steps
    env = gymnasium.make(
        env_id,
        num_envs=int(num_envs),
        obs_mode="state",
        control_mode=control_mode,
        reward_mode=reward_mode,
        sim_backend="physx_cuda",
        max_episode_steps=limit,
        **kwargs,
    )
    return ManiSkillVectorEnv(env, int(num_envs), auto_reset=True, ignore_terminations=False, record_metrics=True)


def prepare_workers() -> None:
    """Before spawning env workers: enable the Vulkan layer once here, so every spawned process inherits it."""
    from rlft.envs.vk_layer import ensure_vulkan_for_sapien

    ensure_vulkan_for_sapien()
