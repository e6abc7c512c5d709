"""The sampling MPC expert: it finds the optimum of a tiny MuJoCo problem whose answer is known."""

from __future__ import annotations

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
