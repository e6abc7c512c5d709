"""``num_envs`` > 1 in the online stage: the envs step in parallel processes (gymnasium AsyncVectorEnv), every
collected macro-step is a replay row with ``utd_ratio`` updates, episodes end and restart per env; composite
adapters (residual RL) go through the same path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlft.errors import ConfigError
from rlft.train.config import train_config_from_dict
from rlft.train.runner import Trainer

ENV = "cube-single-singletask-v0"


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    from rlft.collect import CollectConfig, run_collect

    out = tmp_path_factory.mktemp("demos") / "demos.h5"
    run_collect(CollectConfig(env_id=ENV, num_episodes=2, num_workers=1, out=str(out), progress=False))
    return out


def _cfg(tmp_path, demos, **over):
    d = {
        "algo": "iql",
        "mode": "online",
        "steps": 150,
        "num_envs": 2,
        "dataset": str(demos),
        "env": {"env_id": ENV, "act_horizon": 5, "max_episode_steps": 30},
        "eval": {"num_episodes": 2, "parallel_envs": 2},
        "run": {"out_dir": str(tmp_path), "name": "vec", "log_every": 10, "tensorboard": False},
        "algo_cfg": {
            "batch_size": 16,
            "utd_ratio": 2,
            "warmup_steps": 0,
            "offline_ratio": 0.5,
            "critic_hidden_dims": [32],
            "policy": {"kind": "gaussian", "hidden_dims": [32]},
        },
    }
    d.update(over)
    return train_config_from_dict(d, "test")


def test_two_envs_fill_the_replay_and_update_per_collected_step(tmp_path, demos):
    tr = Trainer(_cfg(tmp_path, demos), quiet=True)
    summary = tr.run()
    rows = len(tr.replay)  # every env's macro-step is a row
    assert summary["steps"] == tr.step >= 150 and tr.step == rows * 5  # chunks of 5 steps, no episode cut short
    assert rows % 2 == 0  # both envs step every iteration
    assert tr._loop["updates"] == 2 * rows  # utd_ratio 2 per collected macro-step, counted across the envs
    assert tr._loop["episode"] >= 2 * (150 // (2 * 30))  # 30-step episodes end and restart in each env
    assert len(tr._loop["recent"]) == tr._loop["episode"]
    stored = tr.replay.state_dict()
    assert np.isfinite(stored["obs"][:rows]).all() and set(np.unique(stored["k"][:rows])) == {5}
    assert 0.0 <= summary["final"]["eval/success_once"] <= 1.0


def test_n_step_links_follow_each_envs_own_trajectory(tmp_path, demos):
    """With two envs the rows of the replay interleave; every n-step link must join a row to the row of the same env
    that starts where it ended (its next observation), and no link may cross an episode's end."""
    tr = Trainer(_cfg(tmp_path, demos, n_step=3), quiet=True)
    tr.run()
    rb, n = tr.replay, len(tr.replay)
    linked = torch.nonzero(rb.succ[:n] >= 0).flatten()
    assert n - len(linked) == tr._loop["episode"] + len(rb._open)  # unlinked: each episode's last row, the open ones
    torch.testing.assert_close(rb.obs[rb.succ[linked]], rb.next_obs[linked])
    b, one = rb.n_step_batch(linked), rb.get(linked)
    assert (b.discount < one.discount).all() and (b.reward <= one.reward + 1e-6).all()  # rewards here are <= 0


def test_n_step_is_refused_where_it_cannot_apply(tmp_path, demos):
    with pytest.raises(ConfigError, match="n_step must be an integer >= 1"):
        _cfg(tmp_path, demos, n_step=0)
    with pytest.raises(ConfigError, match="n_step: dsrl_ppo learns from on-policy rollouts"):
        _cfg(tmp_path, demos, num_envs=1, n_step=3, algo="dsrl_ppo", algo_cfg={"rollout_steps": 64})


def test_num_envs_must_be_positive(tmp_path, demos):
    with pytest.raises(ConfigError, match="num_envs"):
        _cfg(tmp_path, demos, num_envs=0)


def test_on_policy_rollouts_keep_one_env(tmp_path, demos):
    """PPO-style advantages run along one env's steps; several envs would interleave them, so it is refused."""
    with pytest.raises(ConfigError, match="on-policy"):
        _cfg(tmp_path, demos, algo="dsrl_ppo", algo_cfg={"rollout_steps": 64})


def test_parallel_envs_refuse_cameras(tmp_path):
    """Camera observations stay with one env for now; the run says so before it starts stepping."""
    d = _cfg(tmp_path, None, dataset=None, env={"env_id": "visual-cube-single-singletask-v0", "act_horizon": 5})
    d.algo_cfg.offline_ratio = 0.0
    tr = Trainer(d, quiet=True)
    with pytest.raises(ConfigError, match="cameras"):
        tr.run()


def test_residual_rl_over_a_frozen_base_with_two_envs(tmp_path, demos):
    """The adapter's wrappers (here the per-step residual over a frozen flow chunk policy) run inside each env
    process: the composite trains and is saved as with one env."""
    from rlft.policies import build_policy, load_policy
    from rlft.policies.config import PolicyConfig
    from rlft.policies.residual import ResidualPolicy

    base = build_policy(PolicyConfig(kind="flow", hidden_dims=(32,), flow_steps=2, time_embed_dim=8), 28, 5, 5)
    base.save(tmp_path / "base.safetensors")
    over = {
        "algo": "sac",
        "base_policy": str(tmp_path / "base.safetensors"),
        "base_mode": "residual",
        "steps": 60,
        "algo_cfg": {
            "batch_size": 16,
            "warmup_steps": 10,
            "offline_ratio": 0.5,
            "num_critics": 2,
            "critic_hidden_dims": [32],
            "policy": {"kind": "gaussian", "hidden_dims": [32]},
        },
    }
    tr = Trainer(_cfg(tmp_path, demos, **over), quiet=True)
    summary = tr.run()
    assert summary["steps"] == tr.step >= 60 and len(tr.replay) == tr.step  # one env step per residual macro-step
    assert isinstance(load_policy(tmp_path / "vec" / "checkpoints" / "policy_final.safetensors"), ResidualPolicy)
