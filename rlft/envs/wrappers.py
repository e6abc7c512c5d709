"""Environment wrappers: observation history and chunk execution (the SMDP macro-step).

Action range: every policy in rlft acts in [-1, 1]. OGBench's action space already is [-1, 1]^5, so no rescaling is
needed. For an env whose Box is not [-1, 1] wrap it with ``gymnasium.wrappers.RescaleAction(env, -1.0, 1.0)`` *before*
``ChunkExecutor`` (and record data through the same wrapper so dataset actions live in the same range).

Observation normalisation happens inside the policy (``rlft.data.normalize.Normalizer``), not in an env wrapper.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium
import numpy as np
from gymnasium.spaces import Box

from rlft.data.obs import Obs
from rlft.errors import ConfigError


class ObsHistory(gymnasium.Wrapper):
    """Flat float32 observations with the last ``obs_horizon`` (To) observations stacked, oldest first.

    ``obs_horizon=1`` only casts to float32 (OGBench returns float64) and caches the observation space. For To > 1 the
    observation is ``concat(o_{t-To+1}, ..., o_t)`` of shape [To * O]; at reset the first observation is repeated To
    times. This matches how a dataset sampler builds histories (repeat the first observation of the episode).
    """

    def __init__(self, env: gymnasium.Env, obs_horizon: int = 1):
        super().__init__(env)
        if not isinstance(obs_horizon, int) or obs_horizon < 1:
            raise ConfigError(f"obs_horizon must be an integer >= 1, got {obs_horizon!r}")
        space = env.observation_space
        if not isinstance(space, Box):
            raise ConfigError(f"ObsHistory needs a Box observation space, got {space}")
        self.obs_horizon = obs_horizon
        self.base_obs_dim = int(np.prod(space.shape))
        low = np.tile(np.asarray(space.low, dtype=np.float32).reshape(-1), obs_horizon)
        high = np.tile(np.asarray(space.high, dtype=np.float32).reshape(-1), obs_horizon)
        self._observation_space = Box(low=low, high=high, dtype=np.float32)
        act = env.action_space
        self._action_space = Box(low=act.low, high=act.high, dtype=np.float32) if isinstance(act, Box) else act
        self._hist: deque[np.ndarray] = deque(maxlen=obs_horizon)
        #: an env with cameras (``camera_shapes`` {camera: (H, W, C)}) returns ``Obs``; its frames are stacked too
        self.camera_shapes: dict[str, tuple[int, ...]] = dict(getattr(env, "camera_shapes", None) or {})
        self._frames: dict[str, deque[np.ndarray]] = {c: deque(maxlen=obs_horizon) for c in self.camera_shapes}

    @property
    def image_shapes(self) -> dict[str, tuple[int, ...]]:
        """{camera: (To, H, W, C)} of the stacked frames; empty for a state-only env."""
        return {c: (self.obs_horizon, *s) for c, s in self.camera_shapes.items()}

    def _flat(self):
        state = np.concatenate(self._hist) if self.obs_horizon > 1 else self._hist[-1]
        if not self.camera_shapes:
            return state
        return Obs(state, {c: np.stack(f) for c, f in self._frames.items()})

    def _push(self, obs, fill: bool) -> None:
        state = obs.state if isinstance(obs, Obs) else obs
        for _ in range(self.obs_horizon if fill else 1):
            self._hist.append(np.asarray(state, dtype=np.float32).reshape(-1))
            for c, f in self._frames.items():
                f.append(np.asarray(obs.images[c], np.uint8))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._hist.clear()
        for f in self._frames.values():
            f.clear()
        self._push(obs, fill=True)
        return self._flat(), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._push(obs, fill=False)
        return self._flat(), reward, terminated, truncated, info


class ChunkExecutor(gymnasium.Wrapper):
    """Execute an action chunk of H steps open loop: one SMDP macro-step.

    The action space is ``Box`` of shape [H, A] (the inner bounds tiled). ``step(chunk)`` runs ``chunk[0], chunk[1],
    ...`` and stops early when the inner env reports ``terminated`` or ``truncated``; with k <= H steps taken it returns

    * ``R = sum_{i<k} gamma^i r_i``  (discounted reward inside the chunk),
    * ``terminated``/``truncated`` of the last inner step,
    * ``info``: the last inner step's info plus ``k``, ``discount = gamma^k`` (bootstrap factor for the value at the
      returned observation), ``success`` (any inner step succeeded), ``success_at_end`` (the last inner step's
      success), ``env_rewards`` (the k raw rewards), ``env_obs`` (the k observations after each inner step) and
      ``env_success`` (the k inner steps' success flags).

    This is the same convention as ``ChunkBatch`` (reward, discount=gamma^k, terminated); DSRL reuses it by putting
    a noise-to-chunk wrapper on top.
    """

    def __init__(self, env: gymnasium.Env, act_horizon: int, gamma: float):
        super().__init__(env)
        if not isinstance(act_horizon, int) or act_horizon < 1:
            raise ConfigError(f"act_horizon must be an integer >= 1, got {act_horizon!r}")
        if not 0.0 < gamma <= 1.0:
            raise ConfigError(f"gamma must be in (0, 1], got {gamma!r}")
        inner = env.action_space
        if not isinstance(inner, Box) or len(inner.shape) != 1:
            raise ConfigError(f"ChunkExecutor needs a 1-D Box action space, got {inner}")
        self.act_horizon = act_horizon
        self.gamma = float(gamma)
        self.inner_action_dim = int(inner.shape[0])
        self._action_space = Box(
            low=np.tile(np.asarray(inner.low, np.float32), (act_horizon, 1)),
            high=np.tile(np.asarray(inner.high, np.float32), (act_horizon, 1)),
            dtype=np.float32,
        )

    def step(self, chunk):
        chunk = np.asarray(chunk, dtype=np.float32)
        H, A = self.act_horizon, self.inner_action_dim
        if chunk.shape != (H, A):
            raise ValueError(f"ChunkExecutor.step expects an action chunk of shape ({H}, {A}), got {chunk.shape}")
        ret, disc = 0.0, 1.0
        rewards: list[float] = []
        observations: list[np.ndarray] = []
        successes: list[bool] = []
        any_success = False
        success = False
        obs, terminated, truncated, info = None, False, False, {}
        for i in range(H):
            obs, r, terminated, truncated, info = self.env.step(chunk[i])
            r = float(r)
            ret += disc * r
            disc *= self.gamma
            rewards.append(r)
            observations.append(obs)
            success = bool(info.get("success", False))
            successes.append(success)
            any_success = any_success or success
            if terminated or truncated:
                break
        out = dict(info)
        out.update(
            k=len(rewards),
            discount=disc,
            success=any_success,
            success_at_end=success,
            env_rewards=rewards,
            env_obs=observations,
            env_success=successes,
        )
        return obs, ret, bool(terminated), bool(truncated), out
