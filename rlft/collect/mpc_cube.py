"""The MPC task of OGBench's cube environments (``rlft.collect.mpc.MpcTask``): pick the target cube and carry it to
its goal.

**Plans in the env's own action space.** A plan is a sequence of the env's 5-D actions (end-effector displacement,
yaw change, gripper change), so the executed action is exactly what the dataset records. The env turns an action
into joint position targets with an iterative IK solve in Python; the planner cannot run that inside
``mujoco.rollout``, so ``controls`` linearises it once per planning step: the plan's cumulative end-effector
displacement times the damped pseudo-inverse of the pinch site's Jacobian at the current joint angles, plus the
gripper target. Replanning at every control step corrects the linearisation error.

**Cost** (per physics step of the rollout, averaged; the weights are ``CubeCostWeights``), in stages chosen from the
env's real state before each plan (``transition``), as MuJoCo MPC's tasks switch residuals:

1. ``reach``: the pinch point ``reach_height`` above the cube, gripper open, the gripper's yaw aligned with a cube
   face (yaw modulo 90 degrees).
2. ``descend``: the pinch point at the cube's centre, gripper open (entered when above it).
3. ``grasp``: as descend, gripper closed (entered when the pinch point is at the cube).
4. ``carry``: the cube ``carry_height`` above its goal while far from it, then at the goal; gripper closed.
   Back to ``reach`` when the cube has left the gripper.
5. ``release``: gripper open, the pinch point ``reach_height`` above the placed cube; then ``reach`` for the next
   cube not at its goal (several cubes: one after the other, in index order).

Every stage adds ``smooth`` times the squared change between consecutive actions. To add a task: subclass
``MpcTask``, give the planning model the sensors its cost needs, and implement ``controls`` and ``cost``.
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from rlft.collect.mpc import MpcConfig, MpcTask
from rlft.errors import EnvError

STATE = mujoco.mjtState.mjSTATE_FULLPHYSICS
GRASPED = 0.4
"""Gripper closure above which a closed gripper next to the cube holds it (the fingers stop at ~0.56 on a cube)."""


@dataclasses.dataclass
class CubeCostWeights:
    """Weights and thresholds of the cube task's cost."""

    position: float = 10.0
    """Distance of the pinch point (or the carried cube) to the stage's target, metres."""
    gripper: float = 1.0
    """Squared error of the gripper's closure (0 open, 1 closed) to the stage's wish."""
    yaw: float = 0.5
    """Squared yaw misalignment with the nearest cube face, radians (reach and descend)."""
    smooth: float = 0.2
    """Squared change between consecutive actions (env units); larger values give smoother plans."""
    reach_height: float = 0.06
    """Height above the cube from which the gripper descends, metres."""
    carry_height: float = 0.06
    """Height above the goal at which the cube travels, metres."""
    aligned: float = 0.012
    """Horizontal distance below which the gripper is above the cube / the cube above its goal, metres."""
    at_cube: float = 0.012
    """Distance of the pinch point to the cube's centre at which the gripper closes, metres."""


def _wrap(a: np.ndarray, period: float) -> np.ndarray:
    return (a + period / 2) % period - period / 2


class CubeTask(MpcTask):
    """OGBench cube env ``env`` (an rlft env: its ``unwrapped`` is OGBench's CubeEnv); see the module docstring."""

    def __init__(self, env, cfg: MpcConfig, weights: CubeCostWeights | None = None):
        u = env.unwrapped
        if not hasattr(u, "_cube_target_mocap_ids"):
            raise EnvError(f"mpc: {type(u).__name__} is not an OGBench cube env (the MPC task knows only those)")
        if getattr(env, "camera_shapes", None):
            raise EnvError("mpc: plan on the state env (e.g. cube-single-singletask-v0), not a camera env")
        self.env, self.u, self.w = env, u, weights or CubeCostWeights()
        self.model = self._planning_model(u, cfg.plan_timestep)
        control_dt = u.control_timestep()
        self.substeps = int(round(control_dt / self.model.opt.timestep))
        if abs(self.substeps * self.model.opt.timestep - control_dt) > 1e-9:
            raise EnvError(f"mpc.plan_timestep: {cfg.plan_timestep} does not divide the control period {control_dt}")
        self.action_low, self.action_high = -np.ones(5), np.ones(5)
        self.scale = np.asarray(u.action_high, np.float64)
        self.arm_dofs = np.array([u._model.jnt_dofadr[u._model.actuator_trnid[a, 0]] for a in u._arm_actuator_ids])
        self.grip_qpos = 1 + u._model.jnt_qposadr[u._gripper_opening_joint_id]  # in the state vector (after time)
        self.stage, self.target = "reach", 0

    @staticmethod
    def _planning_model(u, timestep: float | None) -> mujoco.MjModel:
        """The env's model plus a sensor on the pinch point (sensordata [:3]), with the planning timestep."""
        from ogbench.manipspace import mjcf_utils

        xml = mjcf_utils.to_string(u._mjcf_model)
        sensor = '<sensor><framepos objtype="site" objname="ur5e/robotiq/pinch"/></sensor>'
        model = mujoco.MjModel.from_xml_string(
            xml.replace("</mujoco>", sensor + "</mujoco>"), mjcf_utils.get_assets(u._mjcf_model)
        )
        if timestep is not None:
            model.opt.timestep = timestep
        return model

    def state(self) -> np.ndarray:
        s = np.empty(mujoco.mj_stateSize(self.u._model, STATE))
        mujoco.mj_getState(self.u._model, self.u._data, s, STATE)
        return s

    # ---- what the cost looks at, in the real env
    def _cube(self) -> tuple[np.ndarray, float, np.ndarray]:
        """The target cube's position and yaw, and its goal position."""
        from ogbench.manipspace import lie

        q = self.u._data.joint(f"object_joint_{self.target}").qpos
        goal = self.u._data.mocap_pos[self.u._cube_target_mocap_ids[self.target]].copy()
        return q[:3].copy(), lie.SO3(wxyz=q[3:]).compute_yaw_radians(), goal

    def _next_target(self) -> int:
        """The first cube (in index order) that is not at its goal (OGBench's success: within 4 cm)."""
        d, ids = self.u._data, self.u._cube_target_mocap_ids
        for i in range(len(ids)):
            if np.linalg.norm(d.joint(f"object_joint_{i}").qpos[:3] - d.mocap_pos[ids[i]]) > 0.04:
                return i
        return self.target

    def _effector(self) -> tuple[np.ndarray, float, float]:
        """The pinch point's position and yaw, and the gripper's closure (0 open, 1 closed)."""
        from ogbench.manipspace import lie

        d, site = self.u._data, self.u._pinch_site_id
        yaw = lie.SO3.from_matrix(d.site_xmat[site].reshape(3, 3)).compute_yaw_radians()
        g = float(np.clip(d.qpos[self.u._gripper_opening_joint_id] / 0.8, 0.0, 1.0))
        return d.site_xpos[site].copy(), yaw, g

    def transition(self) -> None:
        w = self.w
        cube, cube_yaw, goal = self._cube()
        pinch, yaw, g = self._effector()
        dist = np.linalg.norm(pinch - cube)
        placed = np.linalg.norm((cube - goal)[:2]) < w.aligned and abs(cube[2] - goal[2]) < 0.01
        if self.stage == "release" and g < 0.1 and pinch[2] > cube[2] + w.reach_height / 2:
            self.stage, self.target = "reach", self._next_target()
            cube, cube_yaw, goal = self._cube()
        elif self.stage == "carry" and placed:
            self.stage = "release"
        elif self.stage == "carry" and dist > 2 * w.at_cube:
            self.stage = "reach"  # dropped
        elif self.stage == "grasp" and g > GRASPED and dist < 2 * w.at_cube:
            self.stage = "carry"
        elif self.stage in ("reach", "descend") and dist < w.at_cube:
            self.stage = "grasp"
        elif self.stage == "reach" and np.linalg.norm((pinch - cube)[:2]) < w.aligned:
            self.stage = "descend"
        self._now = dict(cube=cube, goal=goal, pinch=pinch, g=g, yaw=yaw, cube_yaw=cube_yaw)
        self._jacobian_pinv()

    def _jacobian_pinv(self, damping: float = 1e-4) -> None:
        """Damped pseudo-inverse of the pinch site's 6 x 6 arm Jacobian (position; rotation) at the current angles."""
        m, d = self.u._model, self.u._data
        jp, jr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        mujoco.mj_jacSite(m, d, jp, jr, self.u._pinch_site_id)
        J = np.concatenate([jp, jr])[:, self.arm_dofs]
        self._Jpinv = J.T @ np.linalg.inv(J @ J.T + damping * np.eye(6))
        self._q0 = d.qpos[[m.jnt_qposadr[m.dof_jntid[i]] for i in self.arm_dofs]].copy()

    def controls(self, actions: np.ndarray) -> np.ndarray:
        a = actions * self.scale  # env units: metres, radians, closure
        lo, hi = self.u._workspace_bounds
        target = np.clip(self._now["pinch"] + np.cumsum(a[..., :3], axis=1), lo, hi)
        twist = np.concatenate(
            [target - self._now["pinch"], np.zeros((*a.shape[:2], 2)), np.cumsum(a[..., 3:4], axis=1)], -1
        )
        q = self._q0 + twist @ self._Jpinv.T
        grip = 255.0 * np.clip(self._now["g"] + np.cumsum(a[..., 4:5], axis=1), 0.0, 1.0)
        ctrl = np.zeros((*a.shape[:2], self.model.nu))
        ctrl[..., self.u._arm_actuator_ids] = q
        ctrl[..., self.u._gripper_actuator_ids] = grip
        return ctrl

    def cost(self, actions: np.ndarray, states: np.ndarray, sensors: np.ndarray) -> np.ndarray:
        w, now = self.w, self._now
        adr = 1 + self.u._model.jnt_qposadr[self.u._model.joint(f"object_joint_{self.target}").id]
        pinch, cube = sensors[..., :3], states[..., adr : adr + 3]
        g = np.clip(states[..., self.grip_qpos] / 0.8, 0.0, 1.0)
        if self.stage == "carry":
            goal = now["goal"].copy()
            if np.linalg.norm((now["cube"] - goal)[:2]) > w.aligned:
                goal[2] += w.carry_height
            dist, want_g = np.linalg.norm(cube - goal, axis=-1), 1.0
        else:
            lift = w.reach_height if self.stage in ("reach", "release") else 0.0
            dist = np.linalg.norm(pinch - (cube + np.array([0.0, 0.0, lift])), axis=-1)
            want_g = 1.0 if self.stage == "grasp" else 0.0
        c = w.position * dist.mean(1) + w.gripper * ((g - want_g) ** 2).mean(1)
        if self.stage in ("reach", "descend"):
            yaw = now["yaw"] + np.cumsum(actions[..., 3] * self.scale[3], axis=1)
            c += w.yaw * (_wrap(yaw - now["cube_yaw"], np.pi / 2) ** 2).mean(1)
        return c + w.smooth * (np.diff(actions, axis=1, prepend=0.0 * actions[:, :1]) ** 2).sum((1, 2))

    def reset(self) -> None:
        """Start an episode (after the env's reset): reach for the first cube not at its goal."""
        self.stage, self.target = "reach", 0
        self.target = self._next_target()
