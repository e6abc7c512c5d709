"""Residual actions over a frozen chunk policy (ResiP: Ankile et al., 2024, "From Imitation to Refinement --
Residual RL for Precise Assembly"; the same idea as residual policy learning, Silver et al., 2018).

The frozen base policy proposes a chunk of H actions from the observation at the chunk's start; the chunk is executed
step by step, and at *every* env step a residual actor sees the current observation and the base action due now and
adds a bounded correction:

    every H steps:  (a^base_t, ..., a^base_{t+H-1}) = base.act(o_t)          (deterministic: zero start noise)
    every step:     a_t = clip(a^base_t + bound * delta_t, low, high),   delta_t in [-1, 1]^A

with ``bound`` the largest correction per action dimension, in env units (``residual_bound``: ``residual_scale``
times the demonstrations' per-dimension action standard deviation by default, or times the action box's half-range,
optionally times a per-dimension multiplier).
The unit matters: a manipulation controller's actions often use a small part of the box (ManiSkill's
``pd_ee_delta_pose`` demos move the end effector by ~1 % of the box per step), and a correction sized to the box
would be as large as the whole action. The loop is closed at the step: the residual can correct the drift of an
open-loop chunk.

``ResidualActionWrapper`` turns an (observation-history) env into the residual's MDP: its observation is
``concat(o_t, a^base_t)`` and its action is ``delta_t``; ``info`` gains ``base_action`` and ``executed_action``.
Put a ``ChunkExecutor`` of horizon 1 on top and the off-policy machinery written for chunk transitions (SAC, replay,
the online loop) runs unchanged, exactly as DSRL runs SAC on ``rlft.envs.noise_action``.

Offline rows enter the residual's space with ``residual_episodes``: the base chunks are recomputed on the data's
observations on the same schedule (a new chunk at t = 0, H, 2H, ... of every episode, as the wrapper does after each
reset) and each data action becomes ``delta_t = clip((a_t - a^base_t) / bound, -1, 1)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium
import numpy as np
import torch
from gymnasium.spaces import Box

from rlft.data.episodes import Episode
from rlft.errors import ConfigError


def compose_action(
    a_base: np.ndarray, delta: np.ndarray, bound: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """``clip(a_base + bound * clip(delta, -1, 1), low, high)`` (raw env units)."""
    d = np.clip(np.asarray(delta, np.float32), -1.0, 1.0)
    return np.clip(a_base + bound * d, low, high).astype(np.float32)


def delta_of(actions: np.ndarray, a_base: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """The residual that best explains ``actions`` given the base actions: ``clip((a - a_base) / bound, -1, 1)``
    (the inverse of ``compose_action`` wherever it is not clipped); 0 on a dimension whose bound is 0, which the
    residual cannot move."""
    bound = np.asarray(bound, np.float32)
    free = bound > 0
    diff = np.asarray(actions, np.float32) - a_base
    delta = np.where(free, diff / np.where(free, bound, 1.0), 0.0)
    return np.clip(delta, -1.0, 1.0).astype(np.float32)


def residual_bound(
    scale: float,
    unit: str,
    low: np.ndarray,
    high: np.ndarray,
    actions: np.ndarray | None = None,
    dim_scale: Sequence[float] = (),
) -> np.ndarray:
    """The per-dimension bound ``scale * dim_scale * unit``: ``unit`` 'action_std' is the standard deviation of
    ``actions`` (the dataset's, [N, A]; dimensions that never move fall back to 1 % of the half-range), 'half_range' is
    ``(high - low) / 2``. ``dim_scale`` (one multiplier in [0, 1] per action dimension; empty = 1 everywhere) sizes
    groups of dimensions differently, e.g. smaller position than rotation corrections; 0 keeps a dimension (a
    gripper, say) exactly the base policy's."""
    if not 0.0 < float(scale) <= 2.0:
        raise ConfigError(f"residual_scale must be in (0, 2] (a multiple of the residual unit), got {scale}")
    half = (np.asarray(high, np.float32) - np.asarray(low, np.float32)) / 2.0
    mult = _dim_multipliers(dim_scale, half.shape[0])
    if unit == "half_range":
        return (float(scale) * mult * half).astype(np.float32)
    if unit != "action_std":
        raise ConfigError(f"residual_unit: {unit!r} is not 'action_std' or 'half_range'")
    if actions is None or len(actions) < 2:
        raise ConfigError(
            "residual_unit: 'action_std' needs a dataset (its actions' standard deviation sizes the "
            "correction); set dataset, or residual_unit: half_range"
        )
    std = np.asarray(actions, np.float64).std(axis=0)
    return (float(scale) * mult * np.maximum(std, 0.01 * half)).astype(np.float32)


def _dim_multipliers(dim_scale: Sequence[float], action_dim: int) -> np.ndarray:
    """``dim_scale`` as an [A] array (ones when empty), refused unless it has one value in [0, 1] per dimension and
    at least one above 0 (a residual that can move nothing is a config mistake)."""
    if len(dim_scale) == 0:
        return np.ones(action_dim, np.float64)
    mult = np.asarray(dim_scale, np.float64)
    if mult.shape != (action_dim,) or not np.all((mult >= 0) & (mult <= 1)) or not np.any(mult > 0):
        raise ConfigError(
            f"residual_dim_scale: expected {action_dim} multipliers in [0, 1], one per action dimension and "
            f"not all 0, got {list(dim_scale)}"
        )
    return mult


class ResidualActionWrapper(gymnasium.Wrapper):
    """The residual's MDP over ``env`` (observations flat, as ``ObsHistory`` gives them); see the module docstring.

    ``base`` is any ``Policy`` whose ``act`` maps the env's observation to a chunk [H, A]; it is queried
    deterministically, one chunk every H steps (and right after ``reset``)."""

    def __init__(self, env: gymnasium.Env, base, bound):
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, Box) or tuple(space.shape) != (base.action_dim,):
            raise ConfigError(
                f"residual wrapper: the env's action space {space} is not the base policy's "
                f"{base.action_dim}-dim action"
            )
        obs_space = env.observation_space
        if int(np.prod(obs_space.shape)) != base.obs_dim:
            raise ConfigError(
                f"residual wrapper: the env's observations have {int(np.prod(obs_space.shape))} dims but "
                f"the base policy takes {base.obs_dim} (obs_horizon mismatch?)"
            )
        A = base.action_dim
        self.base = base
        self.bound = np.broadcast_to(np.asarray(bound, np.float32), (A,)).copy()
        if not (np.all(np.isfinite(self.bound)) and np.all(self.bound >= 0) and np.any(self.bound > 0)):
            raise ConfigError(
                f"residual wrapper: the residual bound must be >= 0 per dimension and > 0 on one, got {self.bound}"
            )
        self.low, self.high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
        self._action_space = Box(-1.0, 1.0, shape=(A,), dtype=np.float32)
        self._observation_space = Box(
            np.concatenate([np.asarray(obs_space.low, np.float32).reshape(-1), self.low]),
            np.concatenate([np.asarray(obs_space.high, np.float32).reshape(-1), self.high]),
            dtype=np.float32,
        )
        self._chunk: np.ndarray | None = None
        self._i = 0

    @torch.no_grad()
    def _replan(self, obs) -> None:
        self._chunk = self.base.act(np.asarray(obs, np.float32), deterministic=True).cpu().numpy().astype(np.float32)
        self._i = 0

    def _observe(self, obs) -> np.ndarray:
        return np.concatenate([np.asarray(obs, np.float32).reshape(-1), self._chunk[self._i]])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._replan(obs)
        return self._observe(obs), info

    def step(self, delta):
        if self._chunk is None:
            raise RuntimeError("ResidualActionWrapper.step called before reset")
        delta = np.asarray(delta, np.float32).reshape(-1)
        if delta.shape != self._action_space.shape:
            raise ValueError(f"residual action must have shape {self._action_space.shape}, got {delta.shape}")
        a_base = self._chunk[self._i]
        action = compose_action(a_base, delta, self.bound, self.low, self.high)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._i += 1
        if self._i == len(self._chunk):
            self._replan(obs)
        info = dict(info)
        info["base_action"], info["executed_action"] = a_base, action
        return self._observe(obs), reward, terminated, truncated, info


def stacked_obs(obs: np.ndarray, obs_horizon: int) -> np.ndarray:
    """[T+1, O] -> [T+1, To*O]: row t is ``concat(o_{t-To+1}, ..., o_t)`` with indices < 0 replaced by o_0 -- what
    ``ObsHistory`` returns after a reset and ``ChunkDataset`` samples."""
    if obs_horizon == 1:
        return np.asarray(obs, np.float32)
    idx = np.clip(np.arange(len(obs))[:, None] + np.arange(-obs_horizon + 1, 1)[None], 0, None)
    return np.asarray(obs, np.float32)[idx].reshape(len(obs), -1)


@torch.no_grad()
def base_actions(base, obs_stacked: np.ndarray, batch: int = 4096) -> np.ndarray:
    """[T+1, To*O] -> [T+1, A]: the base action due at every step of one episode when a new chunk starts at
    t = 0, H, 2H, ... (the wrapper's schedule after a reset)."""
    H = base.act_horizon
    starts = np.arange(0, len(obs_stacked), H)
    chunks = np.concatenate(
        [
            base.act(obs_stacked[starts[i : i + batch]], deterministic=True).cpu().numpy()
            for i in range(0, len(starts), batch)
        ]
    )
    t = np.arange(len(obs_stacked))
    return chunks[t // H, t % H].astype(np.float32)


def residual_episodes(episodes: Sequence[Episode], base, bound: np.ndarray, obs_horizon: int) -> list[Episode]:
    """Offline episodes in the residual's space: observations ``concat(stacked o_t, a^base_t)`` [T+1, To*O + A] and
    actions ``delta_t`` (``delta_of``); rewards and flags unchanged. Sample them with obs_horizon 1 and chunks of 1."""
    out = []
    for ep in episodes:
        o = stacked_obs(ep.obs, obs_horizon)
        a_base = base_actions(base, o)
        out.append(
            Episode(
                np.concatenate([o, a_base], axis=1),
                delta_of(ep.actions, a_base[:-1], bound),
                ep.rewards,
                ep.terminated,
                ep.truncated,
                ep.success,
            )
        )
    return out
