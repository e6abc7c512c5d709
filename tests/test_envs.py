"""Environments, wrappers and oracles on the real OGBench simulator (no mocks)."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from rlft.envs import ChunkExecutor, env_info, make_env
from rlft.envs.ogbench_env import cube_xyzs_from_obs, cube_xyzs_from_qpos, ogbench_task_reward_fn, task_goal_xyzs
from rlft.envs.oracles import collect_demo_episode, collect_play_episode, make_oracle, make_play_env
from rlft.errors import EnvError

SINGLE = "cube-single-singletask-v0"
DOUBLE = "cube-double-singletask-v0"


def test_unknown_id_names_it_and_suggests_close_ids():
    with pytest.raises(EnvError) as ei:
        make_env("cube-singel-singletask-v0")
    msg = str(ei.value)
    assert "cube-singel-singletask-v0" in msg
    assert "cube-single-singletask-v0" in msg  # close match
    assert "ogbench" in msg  # known families
    # pixel ids are camera envs (tests/test_camera.py); OGBench's raw pixel constructor still refuses them
    from rlft.envs.ogbench_env import make_ogbench_env

    with pytest.raises(EnvError, match="pixel"):
        make_ogbench_env("visual-cube-single-singletask-v0")


def test_obs_and_action_dims():
    env = make_env(SINGLE, seed=0)
    info = env_info(env)
    assert info["obs_dim"] == 28 and info["action_dim"] == 5
    assert info["max_episode_steps"] == 200 and info["env_id"] == SINGLE
    assert info["action_low"] == [-1.0] * 5 and info["action_high"] == [1.0] * 5
    obs, _ = env.reset(seed=1)
    assert obs.shape == (28,) and obs.dtype == np.float32
    env2 = make_env("cube-double-singletask-task3-v0", max_episode_steps=17)
    info2 = env_info(env2)
    assert info2["obs_dim"] == 37 and info2["max_episode_steps"] == 17


def test_obs_history_stacks_and_repeats_first():
    env = make_env(SINGLE, obs_horizon=3)
    assert env_info(env)["obs_dim"] == 84
    o0, _ = env.reset(seed=0)
    assert o0.shape == (84,)
    np.testing.assert_array_equal(o0[:28], o0[28:56])
    np.testing.assert_array_equal(o0[:28], o0[56:])
    o1, *_ = env.step(np.zeros(5, np.float32))
    o2, *_ = env.step(np.zeros(5, np.float32))
    np.testing.assert_array_equal(o2[:28], o0[56:])  # oldest = first obs
    np.testing.assert_array_equal(o2[28:56], o1[56:])
    assert not np.array_equal(o2[56:], o1[56:])


def test_chunk_executor_discounting_and_truncation():
    """7-step limit, H=3, gamma=0.9, cube never at goal (reward -1 each step): chunks of k=3, 3, then 1 (truncated)."""
    gamma = 0.9
    env = ChunkExecutor(make_env(SINGLE, max_episode_steps=7), act_horizon=3, gamma=gamma)
    assert env.action_space.shape == (3, 5)
    env.reset(seed=0)
    chunk = np.zeros((3, 5), np.float32)
    for _ in range(2):
        _, R, term, trunc, info = env.step(chunk)
        assert info["k"] == 3 and not term and not trunc
        assert info["env_rewards"] == [-1.0, -1.0, -1.0]
        assert R == pytest.approx(-1 - 0.9 - 0.81)
        assert info["discount"] == pytest.approx(0.729)
        assert len(info["env_obs"]) == 3
    _, R, term, trunc, info = env.step(chunk)
    assert info["k"] == 1 and trunc and not term
    assert R == pytest.approx(-1.0) and info["discount"] == pytest.approx(0.9)
    with pytest.raises(ValueError):
        env.step(np.zeros((2, 5)))


def test_chunk_executor_stops_at_termination():
    """Replay a successful oracle demo; the last chunk spans the terminal step and must stop there."""
    env = make_env(SINGLE)
    ep = collect_demo_episode(env, make_oracle(env), np.random.default_rng(0), seed=123)
    assert ep.terminated[-1] and ep.rewards[-1] == 0.0
    T, gamma, H = len(ep), 0.95, 4
    cenv = ChunkExecutor(make_env(SINGLE), act_horizon=H, gamma=gamma)
    cenv.reset(seed=123)
    inner = cenv.env
    for t in range(T - 2):  # step the inner env up to two steps before the end
        inner.step(ep.actions[t])
    chunk = np.concatenate([ep.actions[T - 2 :], np.zeros((H - 2, 5), np.float32)])
    obs, R, term, trunc, info = cenv.step(chunk)
    assert term and not trunc and info["k"] == 2
    assert info["env_rewards"] == [-1.0, 0.0]
    assert R == pytest.approx(-1.0 + gamma * 0.0)
    assert info["discount"] == pytest.approx(gamma**2)
    assert info["success"] and info["success_at_end"]
    np.testing.assert_allclose(obs, ep.obs[-1], atol=1e-6)  # deterministic replay


def test_markov_oracle_demos_cube_single():
    env = make_env(SINGLE)
    oracle = make_oracle(env, "markov")
    rng = np.random.default_rng(0)
    for i in range(5):
        ep = collect_demo_episode(env, oracle, rng, action_noise=0.0, seed=i)
        ep.validate(f"demo {i}")
        assert ep.success_once and ep.terminated[-1] and not ep.truncated.any()
        assert len(ep) < 100
        assert np.all(ep.rewards[:-1] == -1.0) and ep.rewards[-1] == 0.0
        assert ep.obs.shape == (len(ep) + 1, 28)
        assert np.abs(ep.actions).max() <= 1.0


def test_markov_oracle_demo_cube_double_cube_by_cube():
    env = make_env(DOUBLE)
    ep = collect_demo_episode(env, make_oracle(env), np.random.default_rng(0), seed=0)
    assert ep.success_once and ep.terminated[-1]
    assert set(np.unique(ep.rewards)) <= {-2.0, -1.0, 0.0} and -1.0 in ep.rewards  # one cube placed, then the other


def test_cube_positions_from_obs_match_qpos_and_goals():
    env = make_env(DOUBLE)
    obs, info = env.reset(seed=3)
    np.testing.assert_allclose(cube_xyzs_from_obs(obs, 2), cube_xyzs_from_qpos(info["qpos"], 2), atol=1e-5)
    goals = task_goal_xyzs(env)
    np.testing.assert_allclose(goals, env.unwrapped.cur_task_info["goal_xyzs"])
    r, s = ogbench_task_reward_fn(DOUBLE)({"qpos": info["qpos"][None]})
    assert r.tolist() == [-2.0] and s.tolist() == [False]


def test_play_episode_relabelled_with_task_reward():
    env = make_play_env(SINGLE, max_episode_steps=150)
    assert env_info(env)["obs_dim"] == 28  # same layout as the task env (no goal in the state obs)
    oracle = make_oracle(env, "plan", noise=0.1, noise_smoothing=0.5)
    ep = collect_play_episode(env, oracle, np.random.default_rng(0), oracle_kind="plan", seed=5)
    ep.validate("play")
    assert len(ep) == 150
    assert not ep.terminated.any()
    assert ep.truncated[-1] and not ep.truncated[:-1].any()
    assert set(np.unique(ep.rewards)) <= {-1.0, 0.0}
    np.testing.assert_array_equal(ep.rewards, ep.success.astype(np.float32) - 1.0)
    # the task reward is that of the state before each action, recomputed independently from the observations
    goals = task_goal_xyzs(env)
    d = np.linalg.norm(cube_xyzs_from_obs(ep.obs[:-1], 1)[:, 0] - goals[0], axis=-1)
    np.testing.assert_array_equal(ep.success, d <= 0.04)
    # the oracle actually moves the cube around (it is picked and placed at random targets)
    xyz = cube_xyzs_from_obs(ep.obs, 1)[:, 0]
    assert np.linalg.norm(xyz.max(0) - xyz.min(0)) > 0.05


def test_play_markov_noisy_and_episode_is_function_of_seed():
    env = make_play_env(DOUBLE, max_episode_steps=60)
    oracle = make_oracle(env, "markov")
    a = collect_play_episode(env, oracle, np.random.default_rng(7), oracle_kind="markov", action_noise=0.2, seed=9)
    collect_play_episode(env, oracle, np.random.default_rng(1), oracle_kind="markov", seed=1)  # disturb state
    b = collect_play_episode(env, oracle, np.random.default_rng(7), oracle_kind="markov", action_noise=0.2, seed=9)
    for k in ("obs", "actions", "rewards", "success"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert set(np.unique(a.rewards)) <= {-2.0, -1.0, 0.0}


def test_play_requires_data_collection_mode():
    env = make_env(SINGLE)
    with pytest.raises(EnvError, match="data_collection"):
        collect_play_episode(env, make_oracle(env, "plan"), np.random.default_rng(0))
