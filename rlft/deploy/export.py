"""``rlft export POLICY OUT_DIR``: a policy as a self-contained deployable artifact.

``OUT_DIR`` holds ONNX programs (one per network the policy runs at deployment) and ``policy.json``, the spec a
robot-side runner needs: observation and action layout, the normalisation (already inside the programs; recorded for
reference), the observation-history length, the chunk length, the action bounds and the control rate. The programs
are the policy's *deterministic* behaviour (what ``rlft eval`` measures): zero start noise for the generative kinds,
the mean for the Gaussian one, the fixed candidate set for best-of-N, the latent actor's mean for a DSRL-steered
policy. ``rlft.deploy.PolicyRunner`` runs them with ONNX Runtime and keeps the observation history and the chunk
queue, with nothing of rlft's training stack.

Programs, by kind (``policy.json`` ``kind``):

* ``chunk``: ``chunk.onnx`` -- ``obs`` [B, To * O] float32 (+ ``image_<camera>`` [B, To, H, W, C] uint8 for a
  policy with cameras) -> ``chunk`` [B, H, A] raw env actions. Every plain and composite chunk policy (Gaussian,
  flow, shortcut, consistency, diffusion, one-step FQL, best-of-N QC/DQC, DSRL-steered).
* ``residual``: ``chunk.onnx`` is the frozen base policy, and ``residual.onnx`` -- ``obs`` [B, To * O],
  ``base_action`` [B, A] -> ``action`` [B, A] -- composes the residual correction of the step,
  ``clip(a_base + bound * delta, low, high)`` (ResiP, Ankile et al. 2024; ``rlft.envs.residual``).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import torch
from torch import nn

from rlft.errors import CheckpointError, ConfigError
from rlft.policies.base import Policy, load_policy, policy_extra
from rlft.policies.residual import ResidualPolicy

FORMAT = "rlft-deployed-policy"
VERSION = 1


class ChunkProgram(nn.Module):
    """``Policy.act`` without numpy: raw observation (and frames) -> the deterministic raw chunk [B, H, A]."""

    def __init__(self, policy: Policy, cameras: list[str]):
        super().__init__()
        self.policy, self.cameras = policy, cameras

    def forward(self, obs: torch.Tensor, *frames: torch.Tensor) -> torch.Tensor:
        return self.policy.act_tensor(obs, dict(zip(self.cameras, frames)) if self.cameras else None)


class ResidualProgram(nn.Module):
    """One step of a residual policy: ``clip(a_base + bound * delta, low, high)`` with ``delta`` the residual actor's
    deterministic output on ``concat(obs, a_base)``."""

    def __init__(self, policy: ResidualPolicy, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.residual = policy.residual
        self.register_buffer("bound", torch.as_tensor(policy.bound, dtype=torch.float32))
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))

    def forward(self, obs: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
        delta = self.residual.act_tensor(torch.cat([obs, base_action], -1))[:, 0]
        # rlft.envs.residual.compose_action, in torch
        return torch.minimum(torch.maximum(base_action + self.bound * delta.clamp(-1.0, 1.0), self.low), self.high)


def _to_onnx(program: nn.Module, inputs: tuple, names: list[str], output: str, path: Path) -> None:
    """Export ``program`` with a dynamic batch dimension (torch's ONNX exporter, opset 18)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes: tuple = tuple({0: batch} for _ in inputs)
    if isinstance(program, ChunkProgram) and len(inputs) > 1:  # forward(obs, *frames)
        shapes = ({0: batch}, tuple({0: batch} for _ in inputs[1:]))
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # e.g. "torchvision is not installed" (rlft uses none of its operators)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx = torch.onnx.export(
                program.eval(),
                inputs,
                dynamo=True,
                input_names=names,
                output_names=[output],
                dynamic_shapes=shapes,
                optimize=True,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    onnx.save(str(path))


def env_facts(env_id: str, obs_horizon: int) -> dict:
    """What the artifact records about the env: its action box and its control rate (one env step's seconds)."""
    from rlft.envs import make_env

    env = make_env(env_id, obs_horizon=obs_horizon)
    try:
        u = env.unwrapped
        dt = getattr(u, "dt", None)  # gymnasium's MuJoCo envs
        if callable(getattr(u, "control_timestep", None)):  # OGBench
            dt = u.control_timestep()
        if dt is None and getattr(u, "control_freq", None):  # ManiSkill
            dt = 1.0 / float(u.control_freq)
        space = env.action_space
        inner, rescaled = env, None
        while hasattr(inner, "env"):  # ManiSkill controllers whose box is not [-1, 1] are rescaled to it
            if isinstance(inner, gymnasium.wrappers.RescaleAction):
                box = inner.env.action_space
                rescaled = {
                    "low": np.asarray(box.low).reshape(-1).tolist(),
                    "high": np.asarray(box.high).reshape(-1).tolist(),
                }
            inner = inner.env
        return {
            "low": np.asarray(space.low, np.float32).reshape(-1),
            "high": np.asarray(space.high, np.float32).reshape(-1),
            "rescaled_from": rescaled,
            "dt": None if dt is None else float(dt),
            "cameras": {c: list(s) for c, s in getattr(env, "camera_shapes", {}).items()},
        }
    finally:
        env.close()


def chunk_policy(policy: Policy) -> Policy:
    """The policy that predicts the chunks: a residual policy's frozen base, else the policy itself."""
    return policy.base if isinstance(policy, ResidualPolicy) else policy


def _frame_shapes(policy: Policy) -> dict[str, list[int]]:
    """{camera: [To, H, W, C]} of the frames the chunk policy takes; empty for state-only policies."""
    enc = chunk_policy(policy).encoder
    return {c: list(s) for c, s in enc.spec.image_shapes.items()} if enc is not None else {}


def _example_obs(policy: Policy, n: int, seed: int = 0) -> np.ndarray:
    """``n`` observations around the data the policy was trained on: its normaliser's mean +- 2 standard deviations
    (Gaussian draws, seeded)."""
    g = np.random.default_rng(seed)
    mean = policy.normalizer.obs_mean.cpu().numpy()
    std = policy.normalizer.obs_std.cpu().numpy()
    return (mean + 2.0 * std * g.standard_normal((n, mean.shape[0]))).astype(np.float32)


def _example_frames(shapes: dict[str, list[int]], n: int, seed: int = 0) -> list[np.ndarray]:
    g = np.random.default_rng(seed + 1)
    return [g.integers(0, 256, size=(n, *s), dtype=np.uint8) for s in shapes.values()]


def programs(policy: Policy, facts: dict) -> dict[str, tuple[nn.Module, list[str], str, list[np.ndarray]]]:
    """The policy's deployment networks: file stem -> (module, input names, output name, example inputs)."""
    base, shapes = chunk_policy(policy), _frame_shapes(policy)
    obs = _example_obs(base, 2)
    names = ["obs", *(f"image_{c}" for c in shapes)]
    out = {"chunk": (ChunkProgram(base, list(shapes)), names, "chunk", [obs, *_example_frames(shapes, 2)])}
    if isinstance(policy, ResidualPolicy):
        prog = ResidualProgram(policy, facts["low"], facts["high"])
        out["residual"] = (prog, ["obs", "base_action"], "action", [obs, np.zeros((2, base.action_dim), np.float32)])
    return out


def library_actions(policy: Policy, stem: str, inputs: list[np.ndarray], facts: dict) -> np.ndarray:
    """What rlft itself computes for a program's inputs (the parity reference): ``act`` for the chunk (the base
    policy's, for a residual policy), the residual wrapper's composition for a residual step."""
    from rlft.data.obs import Obs
    from rlft.envs.residual import compose_action

    if stem == "residual":
        obs, a_base = inputs
        delta = policy.act(np.concatenate([obs, a_base], 1), deterministic=True).cpu().numpy()[:, 0]
        return compose_action(a_base, delta, np.asarray(policy.bound, np.float32), facts["low"], facts["high"])
    base, obs = chunk_policy(policy), inputs[0]
    if base.encoder is not None:
        obs = Obs(obs, dict(zip(_frame_shapes(policy), inputs[1:])))
    return base.act(obs, deterministic=True).cpu().numpy()


def spec_of(policy: Policy, extra: dict, facts: dict, env_id: str, obs_horizon: int, source: str) -> dict:
    """``policy.json``: everything a runner needs to feed the programs and use their output (module docstring)."""
    residual, base = isinstance(policy, ResidualPolicy), chunk_policy(policy)
    norm = base.normalizer
    stacked = int(norm.obs_mean.shape[0])
    if stacked % obs_horizon:
        raise ConfigError(f"obs_horizon: {obs_horizon} does not divide the policy's {stacked} observation dims")
    dt = facts["dt"]
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "residual" if residual else "chunk",
        "programs": {"chunk": "chunk.onnx", **({"residual": "residual.onnx"} if residual else {})},
        "policy_class": type(policy).__name__,
        "source": source,
        "env_id": env_id,
        "algo": extra.get("algo"),
        "observation": {
            "dim": stacked // obs_horizon,
            "history": obs_horizon,
            "layout": "concat(o[t-To+1], ..., o[t]), oldest first; after a reset the first observation fills it",
            "cameras": {c: s[1:] for c, s in _frame_shapes(policy).items()},
        },
        "action": {
            "dim": base.action_dim,
            "low": facts["low"].tolist(),
            "high": facts["high"].tolist(),
            # null: the actions go to the controller as they are; else the controller's box, which the actions
            # (in [low, high]) map onto linearly: c = c_low + (a - low) / (high - low) * (c_high - c_low)
            "rescaled_from": facts.get("rescaled_from"),
        },
        "chunk": {"length": base.act_horizon},
        "control": {"dt": dt, "rate_hz": None if not dt else 1.0 / dt},
        "normalisation": {
            "in_programs": True,
            "obs_mean": norm.obs_mean.tolist(),
            "obs_std": norm.obs_std.tolist(),
            "action_low": norm.act_low.tolist(),
            "action_high": norm.act_high.tolist(),
        },
        "execution": {"default": "open_loop"},
    }
    if residual:
        spec["residual"] = {"bound": [float(b) for b in policy.bound]}
    return spec


def parity_inputs(policy: Policy, stem: str, facts: dict, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` seeded inputs of one program: observations around the training data (``_example_obs``), random frames
    for the cameras, and for the residual step the base policy's own first action."""
    obs = _example_obs(chunk_policy(policy), n, seed)
    if stem == "residual":
        return [obs, library_actions(policy, "chunk", [obs], facts)[:, 0]]
    return [obs, *_example_frames(_frame_shapes(policy), n, seed)]


def check_parity(policy: Policy, out_dir: Path, facts: dict, n: int = 1000, seed: int = 0) -> float:
    """Largest |exported - library| over ``n`` seeded inputs for every program of the artifact in ``out_dir``
    (ONNX Runtime against ``library_actions``)."""
    from rlft.deploy.runner import load_session

    worst = 0.0
    for stem, (_, names, _, _) in programs(policy, facts).items():
        inputs = parity_inputs(policy, stem, facts, n, seed)
        ref = library_actions(policy, stem, inputs, facts)
        got = load_session(out_dir / f"{stem}.onnx").run(None, dict(zip(names, inputs)))[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


@torch.no_grad()
def float32_error(policy: Policy, facts: dict, n: int = 1000, seed: int = 0) -> float:
    """The library's own rounding error: largest |float32 - float64| of the policy's programs (in torch) on ``n``
    seeded inputs. Most kinds stay near 1e-7; DDIM from a nearly pure-noise level divides by ``sqrt(abar_T)`` and
    amplifies float32 rounding ~1000x, so no float32 program can match it more closely."""
    import copy

    as64 = programs(copy.deepcopy(policy).double(), facts)
    worst = 0.0
    for stem, (prog, *_) in programs(policy, facts).items():
        inputs = [torch.as_tensor(x) for x in parity_inputs(policy, stem, facts, n, seed)]
        got = prog.eval()(*inputs).double()
        ref = as64[stem][0].eval()(*(x.double() if x.is_floating_point() else x for x in inputs))
        worst = max(worst, float((got - ref).abs().max()))
    return worst


def step_latency(out_dir: str | Path, repeats: int = 200, **options) -> dict[str, float]:
    """Batch-1 latency of the artifact in ``out_dir`` on this CPU (one thread): median and 90th percentile
    milliseconds of a chunk prediction, and of a whole ``step`` averaged over a chunk (which includes a residual
    program, if any)."""
    import time

    from rlft.deploy.runner import PolicyRunner

    runner = PolicyRunner(out_dir, **options)
    mean = np.asarray(runner.spec["normalisation"]["obs_mean"], np.float32)[-runner.obs_dim :]
    images = {c: np.zeros(s, np.uint8) for c, s in runner.cameras.items()} or None
    runner.step(mean, images)
    chunk, step = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.predict_chunk()
        chunk.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(runner.horizon):
            runner.step(mean, images)
        step.append((time.perf_counter() - t0) / runner.horizon)
    ms = lambda xs, q: 1000.0 * float(np.percentile(xs, q))
    return {"chunk_ms_p50": ms(chunk, 50), "chunk_ms_p90": ms(chunk, 90), "step_ms_p50": ms(step, 50)}


def _write_checked(
    policy: Policy, facts: dict, spec: dict, tmp: Path, path: str, parity_obs: int, tolerance: float, latency: bool
) -> None:
    """Write the programs and ``policy.json`` into ``tmp``, refusing programs that miss the parity (see
    ``export_policy``); ``spec`` gains the parity check (and the latency)."""
    from rlft.utils import atomic_write_text

    for stem, (prog, names, output, example) in programs(policy, facts).items():
        _to_onnx(prog, tuple(torch.as_tensor(x) for x in example), names, output, tmp / f"{stem}.onnx")
    worst = check_parity(policy, tmp, facts, parity_obs)
    own = float32_error(policy, facts, parity_obs)
    allowed = tolerance + 2.0 * own
    if not math.isfinite(worst) or worst > allowed:
        raise CheckpointError(
            f"{path}: the exported programs differ from the policy by up to {worst:.3g} (> {allowed:.3g}: "
            f"{tolerance:g} + twice the policy's own float32 error {own:.3g}) on {parity_obs} observations; "
            "not written"
        )
    spec["parity"] = {
        "observations": parity_obs,
        "max_abs_diff": worst,
        "library_float32_error": own,
        "allowed": allowed,
    }
    atomic_write_text(tmp / "policy.json", json.dumps(spec, indent=2))
    if latency:  # measured on the finished artifact, then recorded in it
        spec["latency_cpu_1_thread"] = step_latency(tmp)
        atomic_write_text(tmp / "policy.json", json.dumps(spec, indent=2))


def export_policy(
    path: str | Path,
    out_dir: str | Path,
    env_id: str | None = None,
    parity_obs: int = 1000,
    tolerance: float = 1e-5,
    latency: bool = False,
) -> dict:
    """Write the artifact of the policy file ``path`` to ``out_dir`` (module docstring) and check it: every program
    must give the library's actions to within ``tolerance`` (plus twice the library's own float32 rounding error,
    ``float32_error``, which only DDIM makes larger than ~1e-7) on ``parity_obs`` observations; ``latency`` also
    records ``step_latency``. The folder appears whole or not at all; an existing artifact there is replaced, any
    other non-empty folder is refused."""
    policy = load_policy(path).eval()
    extra = policy_extra(path)
    env_id = env_id or extra.get("env_id")
    if not env_id:
        raise ConfigError(f"env_id: {path} records no env id; pass --env-id")
    obs_horizon = int(extra.get("obs_horizon", 1))
    out = Path(out_dir).resolve()
    if parity_obs < 1:
        raise ConfigError(f"parity_obs: must be >= 1, got {parity_obs}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir: {out} is a file")
    if out.exists() and any(out.iterdir()) and not (out / "policy.json").is_file():
        raise ConfigError(f"out_dir: {out} is a non-empty folder that holds no exported policy; choose another")
    facts = env_facts(env_id, obs_horizon)
    spec = spec_of(policy, extra, facts, env_id, obs_horizon, str(path))
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_checked(policy, facts, spec, tmp, str(path), parity_obs, tolerance, latency)
        old = out.with_name(f".{out.name}.old")
        if out.exists():  # the earlier export stays whole until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return spec
