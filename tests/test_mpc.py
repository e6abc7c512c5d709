"""The sampling MPC expert: it finds the optimum of a tiny MuJoCo problem whose answer is known."""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np
import pytest

from rlft.collect.mpc import MpcConfig, MpcTask, SamplingPlanner, interpolation
from rlft.errors import ConfigError

SLIDER = """
<mujoco>
  <option timestep="0.01"/>
  <worldbody>
    <body name="mass"><joint name="x" type="slide" axis="1 0 0" damping="4"/><geom type="sphere" size="0.05" mass="1"/></body>
  </worldbody>
  <actuator><position joint="x" kp="30" ctrlrange="-1 1"/></actuator>
  <sensor><jointpos joint="x"/></sensor>
</mujoco>
"""
TARGET = 0.3
ROOT = Path(__file__).resolve().parent.parent


class Slider(MpcTask):
    """A mass on a rail under a position servo; cost: squared distance to ``TARGET`` plus a small effort term. The
    optimum holds the servo at the target: the mass then settles there."""

    def __init__(self):
        self.model = mujoco.MjModel.from_xml_string(SLIDER)
        self.data = mujoco.MjData(self.model)
        self.substeps = 5
        self.action_low, self.action_high = -np.ones(1), np.ones(1)

    def state(self):
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        s = np.empty(mujoco.mj_stateSize(self.model, spec))
        mujoco.mj_getState(self.model, self.data, s, spec)
        return s

    def controls(self, actions):
        return actions

    def cost(self, actions, states, sensors):
        return ((sensors[..., 0] - TARGET) ** 2).sum(1) + 1e-4 * (actions**2).sum((1, 2))


@pytest.mark.parametrize("method", ["predictive_sampling", "mppi"])
def test_mpc_finds_the_known_optimum_of_a_tiny_model(method):
    task = Slider()
    cfg = MpcConfig(horizon=10, knots=3, samples=16, noise_std=0.1, method=method)
    planner = SamplingPlanner(task, cfg, np.random.default_rng(0))
    costs, xs, acts = [], [], []
    for _ in range(120):  # 6 s of closed-loop control
        step = planner.plan()
        task.data.ctrl[:] = step.action
        mujoco.mj_step(task.model, task.data, nstep=task.substeps)
        costs.append(step.cost_to_go)
        xs.append(task.data.qpos[0])
        acts.append(step.action[0])
    assert abs(np.mean(xs[-50:]) - TARGET) < 0.02  # the mass is held at the target (to the sampling noise)
    assert abs(np.mean(acts[-50:]) - TARGET) < 0.04  # by the known optimum, a servo command at the target
    assert np.mean(costs[-50:]) < 1e-2 * costs[0] and step.cost_spread >= 0.0


def test_rollout_is_the_simulator():
    """The planner's rollouts equal stepping MuJoCo by hand with the same controls."""
    task = Slider()
    task.data.qpos[0] = -0.2
    planner = SamplingPlanner(task, MpcConfig(horizon=4, knots=2, samples=2), np.random.default_rng(0))
    actions = np.array([[[0.5], [0.5], [-0.5], [1.0]]])
    _, sensors = planner.rollout(actions)
    d = mujoco.MjData(task.model)
    d.qpos[0] = -0.2
    xs = []
    for a in actions[0]:
        for _ in range(task.substeps):
            d.ctrl[:] = a
            mujoco.mj_step(task.model, d)
            xs.append(d.sensordata[0])  # sensors are computed before each step integrates, in both
    np.testing.assert_allclose(sensors[0, :, 0], xs, atol=1e-12)


def test_spline_interpolation_and_warm_start():
    W = interpolation(5, 3)  # knots at control steps 0, 2, 4
    np.testing.assert_allclose(W @ np.array([0.0, 1.0, 0.0]), [0.0, 0.5, 1.0, 0.5, 0.0])
    planner = SamplingPlanner(Slider(), MpcConfig(horizon=5, knots=3, samples=1), np.random.default_rng(0))
    planner.knots = np.array([[0.0], [1.0], [0.0]])
    planner._warm_start()  # one step later, the last knot held
    np.testing.assert_allclose(planner.knots[:, 0], [0.5, 0.5, 0.0])


def test_bad_planner_settings_are_refused():
    with pytest.raises(ConfigError, match="knots <= horizon"):
        MpcConfig(horizon=3, knots=5)
    with pytest.raises(ConfigError, match="plan_timestep"):
        MpcConfig(plan_timestep=0.0)


def test_a_task_the_planner_cannot_build_fails_once_before_the_workers(tmp_path):
    """A planning timestep that does not divide the control period: one clear error, not a pool of dying workers."""
    from rlft.cli import main

    args = ["collect", "--mode", "mpc", "--num-episodes", "2", "--num-workers", "2", "--out", str(tmp_path / "x.h5")]
    assert main([*args, "--mpc.plan-timestep", "0.003"]) == 2
    assert not list(tmp_path.iterdir())


def test_mpc_expert_solves_cube_single_and_stores_its_signals(tmp_path):
    """``rlft collect --mode mpc`` on the real cube-single task: the MPC expert succeeds, and each episode keeps the
    planner's signals, which read back and which a plain training run ignores."""
    from rlft.cli import main
    from rlft.data.h5io import read_episodes

    out = tmp_path / "mpc.h5"
    args = ["collect", "--mode", "mpc", "--num-episodes", "2", "--num-workers", "1", "--out", str(out)]
    assert main([*args, "--mpc.samples", "16", "--no-progress"]) == 0
    episodes, meta = read_episodes(out)
    assert len(episodes) == 2 and all(ep.success_once for ep in episodes)
    assert meta["source"]["mode"] == "mpc" and meta["source"]["mpc"]["samples"] == 16
    for ep in episodes:
        T = len(ep)
        assert ep.signals["planned_actions"].shape == (T, 8, 5)
        np.testing.assert_allclose(
            ep.signals["planned_actions"][:, 0], ep.actions
        )  # the executed action is the plan's first
        assert ep.signals["cost_to_go"].shape == (T,) and ep.signals["cost_spread"].shape == (T,)
        assert np.all(ep.signals["cost_spread"] >= 0)
    train = ["train", "--dataset", str(out), "--steps", "5", "--eval.num-episodes", "0", "--run.out-dir", str(tmp_path)]
    bc, iql = (["--config", str(ROOT / "configs" / f)] for f in ("bc.yaml", "offline_iql.yaml"))
    assert main([*train, *bc, "--run.name", "bc"]) == 0
    # BC weighted by the planner's confidence; an algorithm that weighs no rows refuses the setting
    assert main([*train, *bc, "--run.name", "bcw", "--data-weighting", "plan_confidence"]) == 0
    assert main([*train, *iql, "--run.name", "iqlw", "--data-weighting", "plan_confidence"]) == 2
    # BC on the planner's own chunks; again BC only
    assert main([*train, *bc, "--run.name", "bcp", "--chunk-targets", "planned"]) == 0
    assert main([*train, *iql, "--run.name", "iqlp", "--chunk-targets", "planned"]) == 2


def test_mpc_refuses_envs_it_cannot_plan():
    from rlft.collect import CollectConfig, run_collect

    with pytest.raises(ConfigError, match="OGBench cube tasks only"):
        run_collect(CollectConfig(env_id="PickCube-v1", mode="mpc", num_episodes=1))


def _episode(spread):
    from rlft.data.episodes import Episode

    signals = {"cost_spread": np.asarray(spread, np.float32)} if spread else None
    T = max(len(spread), 1)
    z = np.zeros(T, bool)
    obs, act, rew = np.zeros((T + 1, 2), np.float32), np.zeros((T, 1), np.float32), np.zeros(T, np.float32)
    return Episode(obs, act, rew, z, z, z, signals=signals)


def test_plan_confidence_weights_by_hand():
    import torch

    from rlft.data.batch import ChunkBatch
    from rlft.data.dataset import ChunkDataset
    from rlft.data.episodes import plan_confidence_weights
    from rlft.errors import DatasetError

    out = plan_confidence_weights([_episode([1.0, 2.0]), _episode([0.0, 4.0])], temperature=1.0, where="d.h5")
    raw = np.exp(-np.array([1.0, 2.0, 0.0, 4.0]) / 1.5)  # the median spread is 1.5
    w = np.concatenate([e.signals["row_weight"] for e in out])
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)
    batch = ChunkDataset(out, act_horizon=1, gamma=0.9).get(torch.tensor([3, 0]))
    np.testing.assert_allclose(batch.weight.numpy(), w[[3, 0]], rtol=1e-6)
    mixed = ChunkBatch.cat([batch, ChunkBatch.random(2, 2, 1, 1)])  # rows without a weight (online rows) weigh 1
    np.testing.assert_allclose(mixed.weight.numpy(), [w[3], w[0], 1.0, 1.0], rtol=1e-6)
    with pytest.raises(DatasetError, match="d.h5: episode 0 has no MPC signal 'cost_spread'"):
        plan_confidence_weights([_episode([])], 1.0, "d.h5")


def test_cube_task_controls_follow_the_env_action_space():
    """The cube task's plan-to-controls map: a zero plan holds the arm where it is; a plan of +z steps asks the arm
    for the joint targets whose pinch point (by forward kinematics) rises by the plan's displacement."""
    from rlft.collect.mpc_cube import CubeTask
    from rlft.envs import make_env

    env = make_env("cube-single-singletask-v0")
    env.reset(seed=3)
    task = CubeTask(env, MpcConfig())
    task.reset()
    task.transition()
    u = task.u
    ctrl = task.controls(np.zeros((1, 4, 5)))
    np.testing.assert_allclose(ctrl[0, :, u._arm_actuator_ids].T, np.repeat(task._q0[None], 4, 0), atol=1e-9)
    up = np.zeros((1, 4, 5))
    up[..., 2] = 0.2  # 0.2 of the 5 cm action range per step: +1 cm per step
    q = task.controls(up)[0, -1, u._arm_actuator_ids]
    d = mujoco.MjData(u._model)
    d.qpos[:] = u._data.qpos
    d.qpos[[u._model.jnt_qposadr[u._model.dof_jntid[i]] for i in task.arm_dofs]] = q
    mujoco.mj_kinematics(u._model, d)
    rise = d.site_xpos[u._pinch_site_id] - u._data.site_xpos[u._pinch_site_id]
    np.testing.assert_allclose(rise, [0.0, 0.0, 0.04], atol=2e-3)  # 4 steps of 1 cm, to the linearisation's error
    env.close()


def test_planned_chunk_targets_are_the_plan_made_at_the_start():
    import torch

    from rlft.data.dataset import ChunkDataset
    from rlft.errors import DatasetError

    ep = _episode([1.0, 2.0, 3.0])
    plans = np.arange(3 * 4 * 1, dtype=np.float32).reshape(3, 4, 1) / 12.0  # [T, horizon 4, A 1], inside [0, 1)
    ep.signals["planned_actions"] = plans
    ds = ChunkDataset([ep], act_horizon=2, gamma=0.9, planned_targets=True, act_low=np.zeros(1), act_high=np.ones(1))
    batch = ds.get(torch.tensor([2, 0]))
    lo, hi = ds.normalizer.act_low.numpy(), ds.normalizer.act_high.numpy()
    want = 2 * (plans[[2, 0], :2] - lo) / (hi - lo) - 1
    np.testing.assert_allclose(batch.action.numpy(), want, rtol=1e-6)
    assert batch.valid_mask.numpy().tolist() == [[1.0, 1.0], [1.0, 1.0]]  # the last step's plan is complete too
    with pytest.raises(DatasetError, match="chunk_targets 'planned' needs signals/planned_actions"):
        ChunkDataset([_episode([1.0])], act_horizon=2, gamma=0.9, planned_targets=True)
