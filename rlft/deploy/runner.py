"""``PolicyRunner``: an exported policy (``rlft export``) on a robot, one control step at a time.

It needs numpy and ONNX Runtime only -- no torch, no rlft training code -- so this file can be copied next to the
artifact. It keeps what rlft's env wrappers keep during training and evaluation:

* the **observation history**: the last ``To`` observations, oldest first, the first one repeated after ``reset``
  (``rlft.envs.wrappers.ObsHistory``);
* the **chunk queue**, in one of three execution modes:

  - ``open_loop`` (default; ``rlft.envs.wrappers.ChunkExecutor``): a new chunk of H actions when the last is used up;
  - ``receding``: a new chunk every ``replan_every`` (k <= H) steps, executing its first k actions (receding-horizon
    control, as Diffusion Policy deploys with k < H);
  - ``temporal_ensemble`` (ACT, Zhao et al. 2023): a new chunk at every step; the action at step t is the average of
    every chunk's prediction for t weighted by ``exp(-ensemble_decay * i)``, i = 0 for the oldest prediction;

* for a residual policy, the **per-step correction** on top of the base action due now (``rlft.envs.residual``).

Usage::

    runner = PolicyRunner("deployed/")
    runner.reset()
    while True:
        action = runner.step(obs)            # obs: the env's observation [O] (and images={camera: [H, W, C] uint8})
        obs = robot.apply(action)
"""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path

import numpy as np

EXECUTIONS = ("open_loop", "receding", "temporal_ensemble")


def load_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime session of one program on the CPU with ``threads`` threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def read_spec(out_dir: str | Path) -> dict:
    """``policy.json`` of an exported policy, checked: a missing or foreign file raises ``ValueError`` naming it."""
    path = Path(out_dir) / "policy.json"
    if not path.is_file():
        raise ValueError(f"{out_dir}: no policy.json here -- not a folder written by `rlft export`")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if spec.get("format") != "rlft-deployed-policy" or spec.get("version") != 1:
        raise ValueError(f"{path}: not an rlft deployed policy of version 1")
    missing = [k for k in ("programs", "observation", "action", "chunk", "execution") if k not in spec]
    if missing:
        raise ValueError(f"{path}: missing the key '{missing[0]}'")
    for stem in spec["programs"].values():
        if not (Path(out_dir) / stem).is_file():
            raise ValueError(f"{out_dir}: the program {stem} named in policy.json is missing")
    return spec


class PolicyRunner:
    """Stateful deployment of an exported policy; see the module docstring."""

    def __init__(
        self,
        out_dir: str | Path,
        execution: str | None = None,
        replan_every: int | None = None,
        ensemble_decay: float = 0.01,
        threads: int = 1,
    ):
        self.spec = read_spec(out_dir)
        self.execution = execution or self.spec["execution"]["default"]
        H = self.horizon = int(self.spec["chunk"]["length"])
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution: {self.execution!r} is not one of {EXECUTIONS}")
        if replan_every is not None and self.execution != "receding":
            raise ValueError(f"replan_every applies to execution 'receding' only (execution is {self.execution!r})")
        self.replan_every = H if replan_every is None else int(replan_every)
        if not 1 <= self.replan_every <= H:
            raise ValueError(f"replan_every must be in [1, {H}] (the chunk length), got {replan_every}")
        if ensemble_decay < 0 or not math.isfinite(ensemble_decay):
            raise ValueError(f"ensemble_decay must be a finite number >= 0, got {ensemble_decay}")
        self.ensemble_decay = float(ensemble_decay)
        self.sessions = {k: load_session(Path(out_dir) / f, threads) for k, f in self.spec["programs"].items()}
        ob = self.spec["observation"]
        self.obs_dim, self.history, self.cameras = int(ob["dim"]), int(ob["history"]), dict(ob["cameras"])
        self.reset()

    def reset(self) -> None:
        """Start an episode: empty history, no queued actions."""
        self._obs: deque[np.ndarray] = deque(maxlen=self.history)
        self._frames: dict[str, deque[np.ndarray]] = {c: deque(maxlen=self.history) for c in self.cameras}
        self._queue: list[np.ndarray] = []  # open_loop / receding: the actions still to run
        self._predictions: deque[tuple[int, np.ndarray]] = deque()  # temporal_ensemble: (start step, chunk)
        self.t = 0

    def _push(self, obs, images) -> None:
        o = np.asarray(obs, dtype=np.float32).reshape(-1)
        if o.shape[0] != self.obs_dim:
            raise ValueError(f"observation: expected {self.obs_dim} values, got {o.shape[0]}")
        if not np.all(np.isfinite(o)):
            raise ValueError(f"observation: non-finite values at indices {np.flatnonzero(~np.isfinite(o)).tolist()}")
        if set(images or {}) != set(self.cameras):
            raise ValueError(f"images: expected cameras {sorted(self.cameras)}, got {sorted(images or {})}")
        frames = {}
        for c, shape in self.cameras.items():
            x = np.asarray(images[c])
            if x.dtype != np.uint8 or list(x.shape) != list(shape):
                raise ValueError(f"images[{c!r}]: expected uint8 {list(shape)}, got {x.dtype} {list(x.shape)}")
            frames[c] = x.copy()  # a driver may reuse its buffers
        fill = self.history if not self._obs else 1
        for _ in range(fill):
            self._obs.append(o.copy())
            for c, f in self._frames.items():
                f.append(frames[c])

    def _inputs(self) -> dict[str, np.ndarray]:
        feed = {"obs": np.concatenate(self._obs)[None]}
        for c, f in self._frames.items():
            feed[f"image_{c}"] = np.stack(f)[None]
        return feed

    def predict_chunk(self) -> np.ndarray:
        """The policy's chunk [H, A] for the current history."""
        return self.sessions["chunk"].run(None, self._inputs())[0][0]

    def _base_action(self) -> np.ndarray:
        if self.execution == "temporal_ensemble":
            self._predictions.append((self.t, self.predict_chunk()))
            while self._predictions[0][0] + self.horizon <= self.t:
                self._predictions.popleft()
            preds = np.stack([c[self.t - s] for s, c in self._predictions])  # oldest first
            w = np.exp(-self.ensemble_decay * np.arange(len(preds)))[:, None]
            return (w * preds).sum(0) / w.sum()
        if not self._queue:
            self._queue = list(self.predict_chunk()[: self.replan_every])
        return self._queue.pop(0)

    def step(self, obs, images: dict | None = None) -> np.ndarray:
        """The action [A] for this control step, given the env's newest observation (and camera frames)."""
        self._push(obs, images)
        a = np.asarray(self._base_action(), np.float32)
        if "residual" in self.sessions:
            a = self.sessions["residual"].run(None, {"obs": self._inputs()["obs"], "base_action": a[None]})[0][0]
        self.t += 1
        return a
