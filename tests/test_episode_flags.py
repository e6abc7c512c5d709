"""``scripts/episode_flags.py`` breaks evaluation episodes down by the task's own success conditions; its numbers are
in docs/results.md, so its counting is checked by hand and on the real PickCube-v1 simulator."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from rlft.policies import build_policy
from rlft.policies.config import PolicyConfig
from rlft.policies.residual import ResidualPolicy

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "episode_flags.py"
spec = importlib.util.spec_from_file_location("episode_flags", SCRIPT)
ef = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ef)
torch.set_num_threads(1)


def test_flag_rates_by_hand():
    episodes = [{"is_grasped": True, "success": False}, {"is_grasped": False, "success": False}, {"is_grasped": True}]
    # a flag an episode never reported counts as false there
    assert ef.flag_rates(episodes) == {"is_grasped": pytest.approx(2 / 3, abs=1e-4), "success": 0.0}


def test_bad_dimension_list_is_one_message():
    assert ef.parse_dims("0, 1,2") == [0, 1, 2]
    with pytest.raises(SystemExit, match="comma-separated action dimensions"):
        ef.parse_dims("x,y")


def _policy(obs_dim: int, action_dim: int, kind: str, horizon: int, seed: int):
    torch.manual_seed(seed)
    cfg = (
        PolicyConfig(kind=kind, hidden_dims=(32, 32))
        if kind == "gaussian"
        else PolicyConfig(kind=kind, hidden_dims=(32, 32), flow_steps=2, time_embed_dim=8)
    )
    p = build_policy(cfg, obs_dim, action_dim, horizon)
    p.normalizer.set_stats(np.zeros(obs_dim), np.ones(obs_dim), -np.ones(action_dim), np.ones(action_dim))
    return p


def test_flags_on_pickcube_and_the_residual_kept_on_some_dims():
    pytest.importorskip("mani_skill")
    from rlft.envs import make_env

    env = make_env("PickCube-v1")
    O, A = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    base = _policy(O, A, "flow", 4, 0)
    residual = _policy(O + A, A, "gaussian", 1, 1)  # random weights: a large, non-zero correction
    seeds = [100000, 100001]
    composite = ResidualPolicy.compose(base, residual, [0.5] * A)
    ef.keep_residual_dims(composite, [])  # no dimension kept: the composite executes its base's actions
    assert composite.bound == [ef.OFF] * A
    res_none, flags = ef.episode_flags(composite, "PickCube-v1", seeds, max_episode_steps=15)
    assert len(flags) == 2 and {"is_grasped", "is_obj_placed", "is_robot_static", "success"} <= set(flags[0])
    assert ef.flag_rates(flags)["success"] == np.mean([r.success_once for r in res_none])
    res_base, _ = ef.episode_flags(base, "PickCube-v1", seeds, max_episode_steps=15)
    # the base's episodes, up to float32 rounding: the wrapper queries the base one env at a time, the evaluator the
    # base alone on a batch of live envs (a matmul's rounding depends on the batch)
    assert [r.ret for r in res_none] == pytest.approx([r.ret for r in res_base], rel=1e-5)
    composite = ResidualPolicy.compose(base, residual, [0.5] * A)
    ef.keep_residual_dims(composite, [0, 1, 2])
    assert composite.bound == [0.5, 0.5, 0.5] + [ef.OFF] * (A - 3)
    res_pos, _ = ef.episode_flags(composite, "PickCube-v1", seeds, max_episode_steps=15)
    assert [r.ret for r in res_pos] != pytest.approx([r.ret for r in res_base], rel=1e-3)  # the kept corrections act
    with pytest.raises(SystemExit, match="action dimensions"):
        ef.keep_residual_dims(composite, [A])
    with pytest.raises(SystemExit, match="not a residual"):
        ef.keep_residual_dims(base, [0])
