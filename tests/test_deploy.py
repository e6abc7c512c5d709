"""``rlft export`` and ``rlft.deploy.PolicyRunner``: every policy kind's exported programs reproduce the library's
actions, the runner's history and chunk bookkeeping equal the env wrappers' on the real env, the runner needs no
torch, and a failed export leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlft.cli import main
from rlft.deploy import PolicyRunner
from rlft.deploy.evaluate import deployed_episodes, evaluate_deployed, run_episode
from rlft.deploy.export import _to_onnx, check_parity, export_policy, float32_error, programs
from rlft.errors import CheckpointError, ConfigError
from rlft.nets.encoders import EncoderSpec
from rlft.policies import build_policy
from rlft.policies.best_of_n import BestOfNPolicy
from rlft.policies.config import PolicyConfig
from rlft.policies.onestep import OneStepFlowPolicy
from rlft.policies.residual import ResidualPolicy
from rlft.policies.steered import SteeredFlowPolicy
from rlft.rollout import Evaluator

O, A, H = 6, 3, 4
ENV = "cube-single-singletask-v0"  # 28 observation dims, 5 action dims
FACTS = {"low": -np.ones(A, np.float32), "high": np.ones(A, np.float32), "dt": 0.05, "cameras": {}}


def _stats(p, seed=0):
    """Non-trivial normalisation, so the programs must carry it."""
    g = np.random.default_rng(seed)
    n, a = p.normalizer.obs_mean.shape[0], p.normalizer.act_low.shape[0]
    p.normalizer.set_stats(g.normal(size=n), g.uniform(0.5, 2.0, n), -g.uniform(0.5, 2, a), g.uniform(0.5, 2, a))
    return p


def _policy(kind: str, obs_dim: int = O, horizon: int = H, A: int = A):
    torch.manual_seed(0)
    small = dict(hidden_dims=(32, 32), flow_steps=3, time_embed_dim=16)
    if kind == "flow-unet":
        return build_policy(PolicyConfig(kind="flow", velocity_net="unet", unet_dims=(16, 32), **small), obs_dim, A, 4)
    if kind in ("gaussian", "flow", "shortcut", "consistency", "diffusion"):
        return build_policy(PolicyConfig(kind=kind, **small), obs_dim, A, horizon)
    flow = _stats(_policy("flow", obs_dim, horizon, A))
    if kind == "onestep":
        return OneStepFlowPolicy(obs_dim, A, horizon, flow_kwargs=dict(flow.kwargs), hidden_dims=(32,))
    if kind == "best_of_n":
        return BestOfNPolicy.from_flow(flow, num_critics=2, critic_hidden_dims=(16,), num_samples=4)
    if kind == "steered":
        latent = build_policy(PolicyConfig(kind="gaussian", hidden_dims=(16,)), obs_dim, A, horizon)
        latent.normalizer.set_stats(np.zeros(obs_dim), np.ones(obs_dim), -np.full(A, 1.5), np.full(A, 1.5))
        return SteeredFlowPolicy.compose(flow, latent)
    if kind == "residual":
        res = build_policy(PolicyConfig(kind="gaussian", hidden_dims=(16,)), obs_dim + A, A, 1)
        return ResidualPolicy.compose(flow, res, [0.1] * A)
    spec = EncoderSpec({"front": (2, 16, 16, 3)}, state_dim=obs_dim, feature_dim=4)  # kind "images"
    return build_policy(PolicyConfig(kind="flow", **small), obs_dim + spec.out_dim, A, horizon).attach_encoder(spec)


KINDS = ["gaussian", "flow", "flow-unet", "shortcut", "consistency", "diffusion"]
KINDS += ["onestep", "best_of_n", "steered", "residual", "images"]


@pytest.mark.parametrize("kind", KINDS)
def test_exported_programs_match_the_library_on_1000_observations(kind, tmp_path):
    policy = _policy(kind)
    _stats(policy.residual if kind == "residual" else policy)
    for stem, (prog, names, output, example) in programs(policy.eval(), FACTS).items():
        _to_onnx(prog, tuple(torch.as_tensor(x) for x in example), names, output, tmp_path / f"{stem}.onnx")
    worst = check_parity(policy, tmp_path, FACTS, n=1000)
    own = float32_error(policy, FACTS, n=100)  # the library's own float32 error: every kind has a float64 twin
    if kind != "diffusion":
        assert own < 1e-5
        assert worst <= 1e-5
    else:  # DDIM divides by sqrt(abar_T) ~ 5e-4: torch's own float32 result is off its float64 one by more than 1e-5
        own = float32_error(policy, FACTS, n=1000)
        assert own > 1e-5 and worst <= 1e-5 + 2 * own


def _saved(tmp_path: Path, kind: str, obs_horizon: int = 2) -> Path:
    """A policy for the real env (28 observation dims, a history of 2; 5 action dims), saved as rlft train saves
    it."""
    policy = _stats(_policy(kind, obs_dim=28 * obs_horizon, horizon=4, A=5))
    if kind == "residual":  # a residual actor over the env's box, whose corrections are not all clipped
        _stats(policy.residual).normalizer.act_low.fill_(-1.0)
        policy.residual.normalizer.act_high.fill_(1.0)
    path = tmp_path / f"{kind}.safetensors"
    policy.save(path, {"env_id": ENV, "obs_horizon": obs_horizon, "gamma": 0.99, "algo": "test"})
    return path


@pytest.mark.parametrize("kind", ["flow", "residual"])
def test_runner_acts_exactly_as_the_env_wrappers_on_the_real_env(kind, tmp_path):
    """The runner's observation history (2 observations) and open-loop chunk queue -- and, for a residual policy,
    its per-step correction -- give the actions rlft's own wrappers execute, step for step, over whole episodes."""
    path = _saved(tmp_path, kind)
    spec = export_policy(path, tmp_path / "dep", parity_obs=200)
    assert spec["observation"] == {**spec["observation"], "dim": 28, "history": 2}
    assert spec["chunk"]["length"] == 4 and spec["control"]["rate_hz"] == pytest.approx(20.0)
    from rlft.policies.base import load_policy

    ev = Evaluator(ENV, obs_horizon=2, max_episode_steps=30, n_parallel=1)
    ev.run(load_policy(path), [7, 8], keep_episodes=True)
    ev.close()
    runner = PolicyRunner(tmp_path / "dep")
    from rlft.envs import make_env

    env = make_env(ENV, max_episode_steps=30)
    for seed in (7, 8):
        runner.reset()
        obs, _ = env.reset(seed=seed)
        acts = []
        for _ in range(30):
            acts.append(runner.step(obs))
            obs, *_ = env.step(acts[-1])
        np.testing.assert_allclose(np.stack(acts), ev.episodes[seed].actions, atol=1e-5)
    env.close()


class _Counting(PolicyRunner):
    """A runner whose chunk at step t is ``100 t + [0, 1, .., H-1]`` (per action dim), to check the bookkeeping."""

    def predict_chunk(self):
        self.calls.append(self.t)
        return (100.0 * self.t + np.arange(self.horizon))[:, None].repeat(5, 1).astype(np.float32)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("art")
    path = _saved(tmp, "flow")
    export_policy(path, tmp / "dep", parity_obs=100)
    return tmp / "dep"


def _run(runner, steps=9):
    runner.calls = []
    runner.reset()
    return np.stack([runner.step(np.zeros(28))[0] for _ in range(steps)])


def test_open_loop_receding_and_temporal_ensembling_bookkeeping(artifact):
    r = _Counting(artifact)  # open loop: a chunk at t = 0, 4, 8, each run to its end
    np.testing.assert_array_equal(_run(r), [0, 1, 2, 3, 400, 401, 402, 403, 800])
    assert r.calls == [0, 4, 8]
    r = _Counting(artifact, execution="receding", replan_every=2)  # the first 2 actions of a chunk every 2 steps
    np.testing.assert_array_equal(_run(r, 6), [0, 1, 200, 201, 400, 401])
    assert r.calls == [0, 2, 4]
    r = _Counting(artifact, execution="temporal_ensemble", ensemble_decay=0.5)  # ACT: a chunk every step
    out = _run(r, 6)
    assert r.calls == [0, 1, 2, 3, 4, 5]
    # step 5: the chunks of steps 2..5 predict 100 s + (5 - s); weights exp(-0.5 i), i = 0 for the oldest (s = 2)
    preds, w = np.array([203.0, 302.0, 401.0, 500.0]), np.exp(-0.5 * np.arange(4))
    assert out[5] == pytest.approx((w * preds).sum() / w.sum())
    assert out[0] == 0.0 and out[1] == pytest.approx((1.0 + np.exp(-0.5) * 100.0) / (1 + np.exp(-0.5)))


def test_runner_refuses_bad_input_with_one_message(artifact, tmp_path):
    r = PolicyRunner(artifact)
    with pytest.raises(ValueError, match="expected 28 values, got 27"):
        r.step(np.zeros(27))
    bad = np.zeros(28)
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite values at indices \[3\]"):
        r.step(bad)
    with pytest.raises(ValueError, match="replan_every must be in"):
        PolicyRunner(artifact, execution="receding", replan_every=9)
    with pytest.raises(ValueError, match="no policy.json"):
        PolicyRunner(tmp_path)
    with pytest.raises(ValueError, match="replan_every applies to execution 'receding' only"):
        PolicyRunner(artifact, replan_every=2)
    with pytest.raises(
        ConfigError, match="observations of 37 dims.*exported for 28"
    ):  # an env whose observations are not the artifact's
        evaluate_deployed(artifact, 1, 0, env_id="cube-double-singletask-v0")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export_policy(artifact.parent / "flow.safetensors", tmp_path / "file", parity_obs=10)


def test_runner_keeps_copies_of_the_observations(artifact):
    """A robot driver may reuse one buffer for every observation: the history must not change with it."""
    r = _Counting(artifact)
    r.calls = []
    buf = np.zeros(28, np.float32)
    r.step(buf)
    buf[:] = 1.0
    r.step(buf)
    assert r._obs[0].sum() == 0.0 and r._obs[1].sum() == 28.0


def test_runner_runs_without_torch(artifact):
    """A robot-side process imports numpy and ONNX Runtime only."""
    code = (
        "import sys, numpy as np\n"
        "from rlft.deploy import PolicyRunner\n"
        f"r = PolicyRunner({str(artifact)!r}); r.reset(); a = r.step(np.zeros(28))\n"
        "assert a.shape == (5,) and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_failed_or_refused_export_leaves_nothing_behind(tmp_path):
    path = _saved(tmp_path, "flow")
    with pytest.raises(CheckpointError, match="differ from the policy"):
        export_policy(path, tmp_path / "out", parity_obs=10, tolerance=-1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.safetensors"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no exported policy"):
        export_policy(path, tmp_path / "other", parity_obs=10)
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_export_and_eval_deployed_cli(tmp_path):
    """``rlft export`` then ``rlft eval --deployed``: the same episodes as ``rlft eval`` of the library policy."""
    path = _saved(tmp_path, "flow")
    assert main(["export", str(path), str(tmp_path / "dep"), "--parity-obs", "100"]) == 0
    spec = json.loads((tmp_path / "dep" / "policy.json").read_text())
    assert spec["parity"]["max_abs_diff"] <= 1e-5 and spec["latency_cpu_1_thread"]["chunk_ms_p50"] > 0
    common = ["--num-episodes", "2", "--max-episode-steps", "25"]
    assert main(["eval", "--deployed", str(tmp_path / "dep"), *common, "--out", str(tmp_path / "d.json")]) == 0
    assert main(["eval", "--policy", str(path), *common, "--out", str(tmp_path / "l.json")]) == 0
    dep, lib = (json.loads((tmp_path / f).read_text())["episodes"] for f in ("d.json", "l.json"))
    assert [(e["seed"], e["length"], e["success_once"]) for e in dep] == [
        (e["seed"], e["length"], e["success_once"]) for e in lib
    ]
    summary, _ = evaluate_deployed(tmp_path / "dep", 1, 5, max_episode_steps=10)
    assert summary["eval/num_episodes"] == 1.0
    # a probe of its own per episode (the failure analyses in scripts/): the same seeds, the episodes' own records
    probed = deployed_episodes(
        tmp_path / "dep", 2, 100000, max_episode_steps=25, episode=lambda r, env, s: (s, run_episode(r, env, s).length)
    )
    assert probed == [(e["seed"], e["length"]) for e in dep]
