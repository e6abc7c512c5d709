"""The noise-action wrapper of DSRL (Wagenmaker et al., 2025): act in the latent noise space of a frozen policy.

A flow (or any) policy that takes its start noise explicitly -- ``policy.act(obs, noise=w)`` -- is a deterministic
map ``(s, w) -> action chunk``. Wrapping a chunk executor with it gives an environment whose action is the noise
chunk ``w`` itself:

    step(w):  chunk = policy.act(obs, noise=clip(w, -m, m))     (frozen policy, no gradient)
              obs', R, terminated, truncated, info = chunk_executor.step(chunk)

so the macro-step's reward ``R = sum_{i<k} gamma^i r_i``, ``info['k']``, ``info['discount'] = gamma^k``,
``terminated`` (a true end: no bootstrap) and ``truncated`` (time limit: bootstrap) are exactly the chunk executor's
(``rlft.envs.wrappers.ChunkExecutor``), and any off-policy algorithm written for chunk transitions runs unchanged on
the latent MDP (DSRL-SAC is rlft's SAC, ``rlft.algos.sac``, on this env). ``info`` gains ``decoded_action`` (the
executed env chunk, [H, A]) and ``latent_action`` (the clipped w).

Conventions:

* The action space is ``Box(-m, m, shape=policy.noise_shape)`` -- the same [H, A] shape as the policy's chunk (not
  flattened), ``m = magnitude`` (DSRL's ``action_magnitude``, 1.5 by default). A latent actor that outputs a tanh in
  [-1, 1] scaled by m covers it exactly (the latent actor's ``Normalizer`` holds the bounds +-m).
* The decoding observation is the last one this wrapper returned (from ``reset`` or ``step``); stepping the inner env
  directly bypasses it.
* Decoding uses ``policy.act`` (raw observations in, raw env chunk out), so the policy's own normalisation applies.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium.spaces import Box

from rlft.errors import ConfigError


def noise_shape_of(policy) -> tuple[int, int]:
    """Shape of the start noise that ``policy.act(obs, noise=...)`` takes for one chunk: ``noise_shape`` if the
    policy defines it (flow policies), else its chunk shape (a Gaussian policy's eps)."""
    return tuple(getattr(policy, "noise_shape", policy.chunk_shape))  # type: ignore[return-value]


class NoiseActionWrapper(gymnasium.Wrapper):
    """Latent-noise actions decoded by a frozen policy, executed as one chunk macro-step; see the module docstring.

    ``env`` must execute whole chunks (a ``ChunkExecutor``, possibly wrapped): its action space has the policy's chunk
    shape. ``magnitude`` bounds the noise to ``[-magnitude, magnitude]``.
    """

    def __init__(self, env: gymnasium.Env, policy, magnitude: float = 1.5):
        super().__init__(env)
        if not magnitude > 0:
            raise ConfigError(f"action_magnitude must be > 0, got {magnitude}")
        chunk_space = env.action_space
        if not isinstance(chunk_space, Box) or tuple(chunk_space.shape) != tuple(policy.chunk_shape):
            raise ConfigError(
                f"noise-action wrapper: the env executes chunks of shape {getattr(chunk_space, 'shape', None)} but "
                f"the base policy outputs chunks of shape {tuple(policy.chunk_shape)} (act_horizon/action_dim mismatch)"
            )
        self.policy = policy
        self.magnitude = float(magnitude)
        self.noise_shape = noise_shape_of(policy)
        self._action_space = Box(-self.magnitude, self.magnitude, shape=self.noise_shape, dtype=np.float32)
        self._obs: np.ndarray | None = None

    @torch.no_grad()
    def decode(self, obs: Any, w: Any) -> np.ndarray:
        """The env chunk [H, A] the frozen policy maps (obs, w) to (w clipped to the box first)."""
        w = np.clip(np.asarray(w, dtype=np.float32), -self.magnitude, self.magnitude)
        if w.shape != self.noise_shape:
            raise ValueError(f"noise action must have shape {self.noise_shape}, got {w.shape}")
        chunk = self.policy.act(np.asarray(obs, dtype=np.float32), noise=torch.from_numpy(w), deterministic=True)
        return chunk.detach().cpu().numpy().astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = obs
        return obs, info

    def step(self, w):
        if self._obs is None:
            raise RuntimeError("NoiseActionWrapper.step called before reset")
        w = np.clip(np.asarray(w, dtype=np.float32), -self.magnitude, self.magnitude)
        chunk = self.decode(self._obs, w)
        obs, reward, terminated, truncated, info = self.env.step(chunk)
        self._obs = obs
        info = dict(info)
        info["decoded_action"] = chunk
        info["latent_action"] = w
        return obs, reward, terminated, truncated, info
