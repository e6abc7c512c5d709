"""Residual RL over a frozen chunk policy: the wrapper's step semantics on the real OGBench simulator, the offline
relabelling by hand, the composite policy's round trip, and a CI-sized residual-SAC stage through the runner."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import torch

from rlft.data.episodes import Episode
from rlft.envs import ChunkExecutor, make_env
from rlft.envs.residual import (
    ResidualActionWrapper,
    base_actions,
    compose_action,
    delta_of,
    residual_bound,
    residual_episodes,
    stacked_obs,
)
from rlft.errors import CheckpointError, ConfigError
from rlft.policies import build_policy, load_policy
from rlft.policies.config import PolicyConfig
from rlft.policies.residual import ResidualPolicy, zero_output
from rlft.train.logger import read_metrics

torch.set_num_threads(1)
SINGLE = "cube-single-singletask-v0"
O, A, H = 28, 5, 3
LOW, HIGH = -np.ones(A, np.float32), np.ones(A, np.float32)


def flow_base(seed=0, obs_dim=O):
    torch.manual_seed(seed)
    p = build_policy(PolicyConfig(kind="flow", hidden_dims=(32, 32), flow_steps=3, time_embed_dim=8), obs_dim, A, H)
    p.normalizer.set_stats(np.zeros(obs_dim), np.ones(obs_dim), LOW, HIGH)
    return p


def residual_actor(seed=1, obs_dim=O):
    torch.manual_seed(seed)
    p = build_policy(PolicyConfig(kind="gaussian", hidden_dims=(32,)), obs_dim + A, A, 1)
    p.normalizer.set_stats(np.zeros(obs_dim + A), np.ones(obs_dim + A), LOW, HIGH)
    return p


def test_compose_and_delta_by_hand():
    a_base = np.array([0.5, -0.9, 0.0], np.float32)
    low, high = np.array([-1, -1, -2], np.float32), np.array([1, 1, 2], np.float32)  # half-range 1, 1, 2
    bound = residual_bound(0.2, "half_range", low, high)
    np.testing.assert_allclose(bound, [0.2, 0.2, 0.4], atol=1e-7)
    a = compose_action(a_base, np.array([1.0, -1.0, 3.0]), bound, low, high)  # delta clipped to [-1, 1]
    np.testing.assert_allclose(a, [0.7, -1.0, 0.4], atol=1e-6)  # -0.9 - 0.2 = -1.1 clipped to the box
    d = delta_of(np.array([0.6, -0.9, 1.0]), a_base, bound)
    np.testing.assert_allclose(d, [0.5, 0.0, 1.0], atol=1e-6)  # (1.0 - 0) / 0.4 = 2.5 -> clipped to 1
    # 'action_std': the dataset's per-dimension std (0.5, 0, 1 here); a dimension that never moves gets 1 % of its
    # half-range instead of a zero bound
    acts = np.array([[0.5, 0.3, -1.0], [-0.5, 0.3, 1.0]], np.float32)
    np.testing.assert_allclose(residual_bound(0.5, "action_std", low, high, acts), [0.25, 0.005, 0.5], atol=1e-6)
    with pytest.raises(ConfigError, match="needs a dataset"):
        residual_bound(0.5, "action_std", low, high)
    with pytest.raises(ConfigError, match="residual_scale"):
        residual_bound(0.0, "half_range", low, high)
    # per-dimension multipliers on top of the scale: 0.5 x (0.2, 1, 0.5) x std
    np.testing.assert_allclose(
        residual_bound(0.5, "action_std", low, high, acts, (0.2, 1.0, 0.5)), [0.05, 0.005, 0.25], atol=1e-6
    )
    np.testing.assert_allclose(residual_bound(0.2, "half_range", low, high, dim_scale=(1, 1, 0.5)), [0.2, 0.2, 0.2])
    for bad in ((0.5, 1.0), (0.0, 0.0, 0.0), (0.5, 1.0, 1.5), (0.5, -0.1, 1.0)):  # length, all 0, above 1, below 0
        with pytest.raises(ConfigError, match=r"residual_dim_scale: expected 3 multipliers in \[0, 1\]"):
            residual_bound(0.5, "action_std", low, high, acts, bad)
    # a 0 multiplier freezes that dimension: its bound is 0, and a data action's delta there is 0, not 0 / 0
    frozen = residual_bound(0.2, "half_range", low, high, dim_scale=(1, 1, 0))
    np.testing.assert_allclose(frozen, [0.2, 0.2, 0.0])
    d = delta_of(np.array([0.6, -0.9, 1.0]), a_base, frozen)
    np.testing.assert_allclose(d, [0.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(compose_action(a_base, np.array([1.0, 1.0, 1.0]), frozen, low, high), [0.7, -0.7, 0.0])


def test_zero_residual_executes_the_base_policys_chunks_bit_for_bit():
    """delta = 0 at every step reproduces open-loop chunk execution of the base policy exactly (same observations,
    same actions), with a new chunk every H steps from the observation at the chunk's start."""
    base = flow_base()
    plain = ChunkExecutor(make_env(SINGLE, max_episode_steps=10), H, 0.99)
    res = ResidualActionWrapper(make_env(SINGLE, max_episode_steps=10), base, 0.1)
    obs_p, _ = plain.reset(seed=3)
    obs_r, _ = res.reset(seed=3)
    np.testing.assert_array_equal(obs_r[:O], obs_p)
    executed, t, done = [], 0, False
    while not done:
        chunk = base.act(obs_p, deterministic=True).numpy()
        obs_p, _, term, trunc, info_p = plain.step(chunk)
        for i in range(info_p["k"]):
            np.testing.assert_array_equal(obs_r[O:], chunk[i])  # the base action due now is in the observation
            obs_r, _, term_r, trunc_r, info_r = res.step(np.zeros(A, np.float32))
            np.testing.assert_array_equal(info_r["executed_action"], chunk[i])
            np.testing.assert_array_equal(obs_r[:O], info_p["env_obs"][i])
            executed.append(info_r["executed_action"])
            t += 1
        done = term or trunc
    assert t == 10 and (term_r, trunc_r) == (term, trunc)  # the 10-step limit ends inside the 4th chunk
    # after a reset the schedule starts over: the first base action comes from the reset observation
    obs_r, _ = res.reset(seed=4)
    np.testing.assert_array_equal(obs_r[O:], base.act(obs_r[:O], deterministic=True).numpy()[0])


def test_residual_moves_the_action_by_scale_times_delta_and_stays_in_the_box():
    base = flow_base()
    env = ResidualActionWrapper(make_env(SINGLE), base, 0.25)
    obs, _ = env.reset(seed=0)
    delta = np.array([1, -1, 0.5, 0, -0.2], np.float32)
    _, _, _, _, info = env.step(delta)
    np.testing.assert_allclose(info["executed_action"], np.clip(obs[O:] + 0.25 * delta, -1, 1), atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(A + 1, np.float32))
    with pytest.raises(ConfigError, match="bound"):
        ResidualActionWrapper(make_env(SINGLE), base, 0.0)
    # a zero bound on one dimension (residual_dim_scale 0, e.g. the gripper) executes the base action there exactly
    bound = np.full(A, 0.25, np.float32)
    bound[-1] = 0.0
    env = ResidualActionWrapper(make_env(SINGLE), base, bound)
    obs, _ = env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(A, np.float32))
    assert info["executed_action"][-1] == obs[O:][-1]
    np.testing.assert_allclose(info["executed_action"][:-1], np.clip(obs[O:-1] + 0.25, -1, 1), atol=1e-6)


def test_offline_rows_are_relabelled_on_the_wrappers_schedule():
    base = flow_base()
    rng = np.random.default_rng(0)
    T = 7
    ep = Episode(
        rng.normal(size=(T + 1, O)).astype(np.float32),
        rng.uniform(-1, 1, (T, A)).astype(np.float32),
        -np.ones(T, np.float32),
        np.zeros(T, bool),
        np.eye(1, T, T - 1, dtype=bool)[0],
        np.zeros(T, bool),
    )
    (r,) = residual_episodes([ep], base, np.full(A, 0.5, np.float32), 1)
    # chunks start at t = 0, 3, 6: the base action at t is chunk_{t // 3}[t % 3], from the observation at 3 * (t // 3)
    expect = np.stack([base.act(ep.obs[3 * (t // 3)], deterministic=True).numpy()[t % 3] for t in range(T + 1)])
    np.testing.assert_allclose(r.obs[:, O:], expect, atol=1e-6)
    np.testing.assert_array_equal(r.obs[:, :O], ep.obs)
    np.testing.assert_allclose(r.actions, np.clip((ep.actions - expect[:T]) / 0.5, -1, 1), atol=1e-5)
    np.testing.assert_array_equal(r.rewards, ep.rewards)
    np.testing.assert_array_equal(r.truncated, ep.truncated)
    # with a history of 2 observations, row t is [o_{t-1}, o_t] (o_0 repeated at t = 0)
    s = stacked_obs(ep.obs, 2)
    np.testing.assert_array_equal(s[0], np.concatenate([ep.obs[0], ep.obs[0]]))
    np.testing.assert_array_equal(s[5], np.concatenate([ep.obs[4], ep.obs[5]]))
    np.testing.assert_allclose(
        base_actions(flow_base(obs_dim=2 * O), s)[4],
        flow_base(obs_dim=2 * O).act(s[3], deterministic=True).numpy()[1],
        atol=1e-6,
    )


def test_composite_starts_as_the_base_and_round_trips(tmp_path):
    base = flow_base()
    res = zero_output(residual_actor())
    pol = ResidualPolicy.compose(base, res, [0.1] * A)
    obs = torch.randn(4, O + A)
    assert torch.equal(pol.act(obs), torch.zeros(4, 1, A))  # exactly zero: the first policy is the base
    torch.manual_seed(5)
    torch.nn.init.normal_([m for m in res.modules() if isinstance(m, torch.nn.Linear)][-1].weight)
    pol.save(tmp_path / "p.safetensors")
    loaded = load_policy(tmp_path / "p.safetensors")
    assert isinstance(loaded, ResidualPolicy) and loaded.bound == pytest.approx([0.1] * A)
    assert (loaded.obs_dim, loaded.action_dim, loaded.act_horizon) == (O, A, H)  # faces the env like its base
    torch.testing.assert_close(loaded.act(obs), pol.act(obs))
    torch.testing.assert_close(loaded.base.act(obs[:, :O]), base.act(obs[:, :O]))
    # evaluation goes through the composite's executor: identical episodes for the saved and the live policy
    from rlft.rollout import evaluate_policy

    s1, _ = evaluate_policy(pol, SINGLE, 2, 0, max_episode_steps=12, parallel_envs=2)
    s2, _ = evaluate_policy(loaded, SINGLE, 2, 0, max_episode_steps=12, parallel_envs=2)
    assert s1 == s2 and s1["eval/episode_length"] == 12
    # a frozen dimension (bound 0) survives the round trip; a bound of all zeros is refused naming the bound
    ResidualPolicy.compose(base, res, [0.1] * (A - 1) + [0.0]).save(tmp_path / "f.safetensors")
    assert load_policy(tmp_path / "f.safetensors").bound == pytest.approx([0.1] * (A - 1) + [0.0])
    with pytest.raises(CheckpointError, match="bound"):
        ResidualPolicy.compose(base, res, [0.0] * A)


def _stage(tmp_path, base_path, dataset, **over):
    from rlft.train.config import train_config_from_dict

    d = {
        "algo": "sac",
        "mode": "online",
        "steps": 60,
        "base_policy": str(base_path),
        "base_mode": "residual",
        "residual_scale": 0.2,
        "dataset": str(dataset),
        "env": {"env_id": SINGLE, "act_horizon": H, "max_episode_steps": 25},
        "eval": {"num_episodes": 2, "parallel_envs": 2},
        "run": {"out_dir": str(tmp_path), "name": "residual", "log_every": 10, "tensorboard": False},
        "algo_cfg": {
            "batch_size": 16,
            "utd_ratio": 2,
            "warmup_steps": 20,
            "offline_ratio": 0.5,
            "num_critics": 4,
            "critic_subset": 2,
            "critic_hidden_dims": [32],
            "actor_warmup_steps": 15,
            "policy": {"kind": "gaussian", "hidden_dims": [32]},
        },
    }
    d.update(over)
    return train_config_from_dict(d, "test")


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    from rlft.collect import CollectConfig, run_collect

    out = tmp_path_factory.mktemp("demos") / "demos.h5"
    run_collect(
        CollectConfig(env_id=SINGLE, num_episodes=2, num_workers=1, out=str(out), progress=False, max_episode_steps=40)
    )
    return out


def test_residual_sac_stage_end_to_end(tmp_path, demos):
    """SAC on the residual env with 50/50 offline/online batches: offline rows relabelled to delta, a composite
    saved, evaluated, rolled out for distillation and continued by a later stage."""
    from rlft.cli import main
    from rlft.data.h5io import read_episodes
    from rlft.train.runner import Trainer

    base = flow_base()
    base.save(tmp_path / "base.safetensors")
    tr = Trainer(_stage(tmp_path, tmp_path / "base.safetensors", demos), quiet=True)
    assert tr.algo.policy.chunk_shape == (1, A) and tr.algo.policy.obs_dim == O + A
    b = tr.dataset.sample(64, torch.Generator().manual_seed(0))
    assert b.action.shape == (64, 1, A) and b.action.abs().max() <= 1.0
    summary = tr.run()
    assert summary["steps"] == 60
    assert (tr.replay.chunk[: tr.replay.size] != 0).any()  # no ramp: the residual explores from the first step
    rows = read_metrics(tmp_path / "residual")
    assert any("critic/critic_loss" in r for r in rows)
    assert not any("actor/actor_loss" in r for r in rows if r["step"] <= 30)  # critic warm-up: the actor waits
    path = tmp_path / "residual" / "checkpoints" / "policy_final.safetensors"
    loaded = load_policy(path)
    data_actions = np.concatenate([e.actions for e in read_episodes(demos)[0]])
    assert isinstance(loaded, ResidualPolicy) and loaded.bound == pytest.approx(0.2 * data_actions.std(0), rel=1e-4)
    torch.testing.assert_close(loaded.base.act(torch.zeros(1, O)), base.act(torch.zeros(1, O)))  # base frozen
    # rlft eval and rlft collect --mode policy take the composite
    assert (
        main(
            [
                "eval",
                "--policy",
                str(path),
                "--num-episodes",
                "2",
                "--max-episode-steps",
                "15",
                "--out",
                str(tmp_path / "ev.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "ev.json").read_text())["summary"]["eval/episode_length"] == 15
    out = tmp_path / "distil.h5"
    assert (
        main(
            [
                "collect",
                "--mode",
                "policy",
                "--policy",
                str(path),
                "--env-id",
                SINGLE,
                "--num-episodes",
                "2",
                "--no-only-success",
                "--max-episode-steps",
                "15",
                "--num-workers",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    eps, _ = read_episodes(out)
    assert eps[0].obs.shape == (16, O) and eps[0].actions.shape == (15, A)  # env observations and executed actions
    # a later stage continues the residual from the composite; a mismatched scale is refused
    tr2 = Trainer(
        _stage(
            tmp_path,
            tmp_path / "base.safetensors",
            demos,
            base_policy=None,
            init_policy=str(path),
            run={"out_dir": str(tmp_path), "name": "r2", "tensorboard": False},
        ),
        quiet=True,
    )
    torch.testing.assert_close(tr2.algo.policy.act(torch.zeros(1, O + A)), loaded.act(torch.zeros(1, O + A)))
    with pytest.raises(ConfigError, match="residual_scale/residual_dim_scale/residual_unit"):
        Trainer(_stage(tmp_path, None, demos, base_policy=None, init_policy=str(path), residual_scale=0.3), quiet=True)
    with pytest.raises(ConfigError, match="base_mode"):
        Trainer(_stage(tmp_path, None, demos, base_policy=None, init_policy=str(path), base_mode="noise"), quiet=True)


def test_residual_stage_trains_an_awac_actor(tmp_path, demos):
    """The residual action space is not SAC's: AWAC (advantage-weighted likelihood of the executed deltas) trains the
    residual from a zero start, on online and relabelled offline rows, and saves a composite over the frozen base."""
    from rlft.train.runner import Trainer

    base = flow_base()
    base.save(tmp_path / "base.safetensors")
    cfg = _stage(
        tmp_path,
        tmp_path / "base.safetensors",
        demos,
        algo="awac",
        algo_cfg={
            "batch_size": 16,
            "utd_ratio": 2,
            "warmup_steps": 20,
            "offline_ratio": 0.5,
            "num_critics": 2,
            "critic_hidden_dims": [32],
            "lam": 0.1,
            "policy": {"kind": "gaussian", "hidden_dims": [32]},
        },
    )
    tr = Trainer(cfg, quiet=True)
    obs = torch.randn(4, O + A)
    assert tr.algo.policy.act(obs).abs().max() == 0  # the first policy is the base
    tr.run()
    rows = read_metrics(tmp_path / "residual")
    assert any("actor/awr_weights_max" in r for r in rows)
    loaded = load_policy(tmp_path / "residual" / "checkpoints" / "policy_final.safetensors")
    assert isinstance(loaded, ResidualPolicy) and loaded.residual.act(obs).abs().max() > 0  # the actor moved
    torch.testing.assert_close(loaded.base.act(torch.zeros(1, O)), base.act(torch.zeros(1, O)))  # base frozen


def test_per_dimension_residual_bound_reaches_the_stage_from_yaml(tmp_path, demos):
    """``residual_dim_scale`` in a stage's config mapping (what its YAML loads to) sizes the stage's bound per
    dimension: residual_scale x multiplier x the dataset's action std; a multiplier list of the wrong length is
    refused naming the field."""
    from rlft.data.h5io import read_episodes
    from rlft.train.runner import Trainer

    base = flow_base()
    base.save(tmp_path / "base.safetensors")
    mult = [0.2] * 3 + [1.0] * (A - 3)
    tr = Trainer(_stage(tmp_path, tmp_path / "base.safetensors", demos, residual_dim_scale=mult), quiet=True)
    std = np.concatenate([e.actions for e in read_episodes(demos)[0]]).astype(np.float64).std(axis=0)
    np.testing.assert_allclose(tr.adapter.bound, 0.2 * np.asarray(mult) * std, rtol=1e-5)
    with pytest.raises(ConfigError, match="residual_dim_scale"):
        Trainer(_stage(tmp_path, tmp_path / "base.safetensors", demos, residual_dim_scale=[0.5]), quiet=True)


def test_progressive_exploration_runs_the_base_alone_early(tmp_path, demos):
    """Policy Decorator's schedule: at env step t < ramp each row keeps its residual with probability t / ramp and
    runs the base alone (delta = 0) otherwise; from the ramp's end on the chunk is left alone. In a run whose ramp
    outlasts it, every stored exploration action is the base's own (delta = 0)."""
    from rlft.train.adapters import ResidualAdapter
    from rlft.train.runner import Trainer

    adapter = ResidualAdapter(flow_base(), np.full(A, 0.1, np.float32), ramp_steps=1000)
    chunk = torch.rand(4000, 1, A) + 0.5  # no zero entries
    assert torch.equal(adapter.exploring(chunk, 0), torch.zeros_like(chunk))
    assert torch.equal(adapter.exploring(chunk, 1000), chunk)
    torch.manual_seed(0)
    out = adapter.exploring(chunk, 250)
    kept = (out != 0).all(dim=(1, 2))
    assert torch.equal(out[kept], chunk[kept]) and (out[~kept] == 0).all()  # whole rows, kept or zeroed
    assert 0.22 < kept.float().mean() < 0.28
    for bad in (
        {"residual_ramp_steps": -1},
        {"residual_ramp_steps": 1.5},
        {"residual_ramp_steps": 9, "base_mode": "noise"},
    ):
        with pytest.raises(ConfigError, match="residual_ramp_steps"):
            _stage(tmp_path, tmp_path / "base.safetensors", demos, **bad)

    flow_base().save(tmp_path / "base.safetensors")
    tr = Trainer(
        _stage(tmp_path, tmp_path / "base.safetensors", demos, steps=30, residual_ramp_steps=10**6), quiet=True
    )
    tr.run()
    assert tr.replay.size == 30 and (tr.replay.chunk[: tr.replay.size] == 0).all()


def test_shipped_conservative_residual_config_trains_a_composite(tmp_path, demos):
    """configs/online_residual_conservative.yaml, shrunk to a CI size: CQL's penalised critic on the residual env, the
    actor frozen through the critic-only warm-up, and a composite policy saved that starts from the base."""
    from rlft.config import read_yaml
    from rlft.train.config import train_config_from_dict
    from rlft.train.runner import Trainer

    base = flow_base()
    base.save(tmp_path / "base.safetensors")
    d = read_yaml("configs/online_residual_conservative.yaml")
    d.update(steps=60, base_policy=str(tmp_path / "base.safetensors"), dataset=str(demos), policy_ema=0.0)
    d["env"] = {"env_id": SINGLE, "act_horizon": H, "max_episode_steps": 25}
    d["eval"] = {"num_episodes": 2, "parallel_envs": 2}
    d["run"] = {"out_dir": str(tmp_path), "name": "cons", "log_every": 10, "tensorboard": False}
    d["algo_cfg"].update(batch_size=16, warmup_steps=20, actor_warmup_steps=30, critic_hidden_dims=[32])
    d["algo_cfg"]["policy"]["hidden_dims"] = [32]
    summary = Trainer(train_config_from_dict(d, "test"), quiet=True).run()
    assert summary["steps"] == 60
    rows = read_metrics(tmp_path / "cons")
    assert any("critic/cql_penalty" in r for r in rows)
    assert not any("actor/actor_loss" in r for r in rows if r["step"] <= 40)  # frozen until env step 20 + 30
    assert any("actor/actor_loss" in r for r in rows if r["step"] > 50)
    loaded = load_policy(tmp_path / "cons" / "checkpoints" / "policy_final.safetensors")
    assert isinstance(loaded, ResidualPolicy)
    torch.testing.assert_close(loaded.base.act(torch.zeros(1, O)), base.act(torch.zeros(1, O)))
