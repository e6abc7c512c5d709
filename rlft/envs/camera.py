"""OGBench's pixel tasks (``visual-*`` ids) as camera observations: ``Obs(state=proprioception, images={"front"})``.

OGBench's visual envs return only the 64x64 frame of the ``front_pixels`` camera. A robot also knows its own joints,
so the observation here is the frame plus the 19 proprioceptive dims of the state tasks' observation (joint positions
and velocities, effector position and yaw, gripper opening and contact -- ``rlft.envs.ogbench_env`` documents the
layout), computed from OGBench's own per-step ``info`` (``proprio/*``). Cube positions, which the state tasks also
give, are *not* in it: they are what the camera has to see. Scripted oracles still read the privileged state from the
same ``info``, so collection works unchanged and the dataset stores only what the policy may see.

The frames are rendered with ``rlft.envs.render``'s quality setting (``fast`` by default: no shadow map, no MSAA);
the quality is recorded in the env (``render_quality``) so collection can put it in the dataset's provenance.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium.spaces import Box

from rlft.data.obs import Obs
from rlft.envs.render import RenderQuality, apply_render_quality

PROPRIO_DIM = 19
CAMERA = "front"


def proprio_vector(info: dict[str, Any]) -> np.ndarray:
    """The first 19 dims of OGBench's cube state observation, from ``compute_ob_info()``'s ``proprio/*`` entries."""
    c = np.array([0.425, 0.0, 0.0])
    parts = [
        info["proprio/joint_pos"],
        info["proprio/joint_vel"],
        (np.asarray(info["proprio/effector_pos"]) - c) * 10.0,
        np.cos(info["proprio/effector_yaw"]),
        np.sin(info["proprio/effector_yaw"]),
        np.asarray(info["proprio/gripper_opening"]) * 3.0,
        info["proprio/gripper_contact"],
    ]
    return np.concatenate([np.asarray(p, np.float64).reshape(-1) for p in parts]).astype(np.float32)


class CameraObs(gymnasium.Wrapper):
    """An OGBench pixel env whose observations are ``Obs(proprio [19], {"front": [H, W, 3] uint8})``."""

    def __init__(self, env: gymnasium.Env, render_quality: RenderQuality = "fast"):
        super().__init__(env)
        apply_render_quality(env, render_quality)
        self.render_quality = render_quality
        u = env.unwrapped
        self.camera_shapes = {CAMERA: (int(u._render_height), int(u._render_width), 3)}
        self._observation_space = Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32)  # the state part

    def _obs(self, frame, info) -> Obs:
        return Obs(proprio_vector(info), {CAMERA: np.asarray(frame, np.uint8)})

    def reset(self, **kwargs):
        frame, info = self.env.reset(**kwargs)
        return self._obs(frame, info), info

    def step(self, action):
        frame, r, term, trunc, info = self.env.step(action)
        return self._obs(frame, info), r, term, trunc, info


def make_ogbench_any(env_id: str, render_quality: RenderQuality = "fast", **kwargs: Any) -> gymnasium.Env:
    """The ogbench family's constructor: a state id as ``make_ogbench_env`` builds it, a ``visual-*`` id wrapped in
    ``CameraObs``."""
    from rlft.envs.ogbench_env import make_ogbench_env

    if not env_id.startswith("visual-"):
        return make_ogbench_env(env_id, **kwargs)
    return CameraObs(make_ogbench_env(env_id, allow_pixels=True, **kwargs), render_quality)
