"""Sampling-based model-predictive control over MuJoCo's native rollouts: an expert that needs no demonstrations.

At every control step the planner samples ``samples`` action plans around its nominal plan, simulates all of them
from the env's current state with ``mujoco.rollout`` (C++, multi-threaded; no Python loop over physics steps),
scores them with the task's cost and keeps the best (predictive sampling, Howell et al. 2022, "Predictive Sampling:
Real-time Behaviour Synthesis with MuJoCo") or their exponentially weighted mean (MPPI, Williams et al. 2017). As in
MuJoCo MPC, a plan is a spline: ``knots`` control points over ``horizon`` control steps, linearly interpolated, so
few samples cover smooth motions; the planning model may use a coarser physics timestep than the env. The nominal plan
is warm-started from the previous step's plan shifted by one control step.

A task (``MpcTask``) says how a plan of env actions becomes actuator controls, and what a rolled-out trajectory
costs; ``rlft.collect.mpc_cube`` implements it for OGBench's cube tasks. Per control step the planner returns the
signals a learner can use (``PlanStep``): the executed action, the planned action sequence, the plan's predicted
cost-to-go and the spread of the sampled costs.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from rlft.errors import ConfigError


@dataclasses.dataclass
class MpcConfig:
    """The sampling planner's settings."""

    horizon: int = 8
    """Control steps each plan covers."""
    knots: int = 3
    """Spline control points over the horizon (linear interpolation between them)."""
    samples: int = 24
    """Plans rolled out per control step (the nominal plan is always one of them)."""
    noise_std: float = 0.3
    """Std of the Gaussian perturbation of each knot, in the env's action units."""
    method: Literal["predictive_sampling", "mppi"] = "predictive_sampling"
    """Keep the cheapest plan (predictive sampling) or the cost-weighted mean of all plans (MPPI)."""
    temperature: float = 0.1
    """MPPI: softmax temperature, as a fraction of the sampled costs' spread (max - min)."""
    plan_timestep: float | None = 0.005
    """Physics timestep of the planning model (None: the env's); must divide the control period."""
    threads: int = 1
    """Threads of mujoco.rollout per planner (collect workers already use the other cores)."""

    def __post_init__(self) -> None:
        if self.horizon < 1 or not 1 <= self.knots <= self.horizon or self.samples < 1:
            raise ConfigError(
                f"mpc: need horizon >= 1, 1 <= knots <= horizon, samples >= 1 (got {self.horizon}, {self.knots}, "
                f"{self.samples})"
            )
        if self.noise_std < 0 or self.temperature <= 0 or self.threads < 1:
            raise ConfigError("mpc: noise_std must be >= 0, temperature > 0 and threads >= 1")
        if self.plan_timestep is not None and not self.plan_timestep > 0:
            raise ConfigError(f"mpc.plan_timestep: must be > 0 seconds or null, got {self.plan_timestep}")
        if self.method not in ("predictive_sampling", "mppi"):
            raise ConfigError(f"mpc.method: {self.method!r} is not 'predictive_sampling' or 'mppi'")


@dataclasses.dataclass
class PlanStep:
    """What one planning step returns."""

    action: np.ndarray
    """The action to execute now [A] (the plan's first)."""
    plan: np.ndarray
    """The planned action sequence [horizon, A]."""
    cost_to_go: float
    """The chosen plan's predicted cost over the horizon."""
    cost_spread: float
    """Standard deviation of the sampled plans' costs (small: the planner is sure of its choice)."""


class MpcTask:
    """What a MuJoCo task gives the planner. ``model`` is the planning model (the env's, with the sensors the cost
    reads and possibly a coarser timestep), ``substeps`` its physics steps per control step."""

    model: "mujoco.MjModel"  # noqa: F821  (mujoco is imported where it runs: collect workers import it late)
    substeps: int
    action_low: np.ndarray
    action_high: np.ndarray

    def state(self) -> np.ndarray:
        """The env's current full physics state (``mj_getState``, ``mjSTATE_FULLPHYSICS``)."""
        raise NotImplementedError

    def controls(self, actions: np.ndarray) -> np.ndarray:
        """Plans of env actions [N, T, A] -> actuator controls [N, T, nu] (one per control step)."""
        raise NotImplementedError

    def cost(self, actions: np.ndarray, states: np.ndarray, sensors: np.ndarray) -> np.ndarray:
        """Total cost [N] of each rolled-out plan: its actions [N, T, A], states [N, T * substeps, nstate] and
        sensor readings [N, T * substeps, nsensordata]."""
        raise NotImplementedError

    def reset(self) -> None:
        """Start an episode (called after the env's reset)."""

    def transition(self) -> None:
        """Update the task's stage from the env's current state (called before each plan), as MuJoCo MPC's tasks
        do; a task without stages does nothing."""


def interpolation(horizon: int, knots: int) -> np.ndarray:
    """[horizon, knots]: row t linearly interpolates the knots (spread evenly over the horizon) at control step t."""
    times = np.linspace(0.0, horizon - 1, knots) if knots > 1 else np.zeros(1)
    W = np.zeros((horizon, knots))
    for t in range(horizon):
        if knots == 1:
            W[t, 0] = 1.0
            continue
        j = min(int(np.searchsorted(times, t, side="right")) - 1, knots - 2)
        u = (t - times[j]) / (times[j + 1] - times[j])
        W[t, j], W[t, j + 1] = 1.0 - u, u
    return W


class SamplingPlanner:
    """Predictive sampling / MPPI for one ``MpcTask``; see the module docstring."""

    def __init__(self, task: MpcTask, cfg: MpcConfig, rng: np.random.Generator):
        self.task, self.cfg, self.rng = task, cfg, rng
        self.W = interpolation(cfg.horizon, cfg.knots)
        import mujoco  # here, not at import: rlft.collect.common imports this module's config

        self.datas = [mujoco.MjData(task.model) for _ in range(cfg.threads)]
        self.reset()

    def reset(self) -> None:
        """Forget the nominal plan (zero actions): call at the start of an episode."""
        self.knots = np.zeros((self.cfg.knots, len(self.task.action_low)))

    def _warm_start(self) -> None:
        """Shift the nominal plan by one control step: the new knots sit on the old spline one step later."""
        plan = self.W @ self.knots
        times = np.linspace(0.0, self.cfg.horizon - 1, self.cfg.knots) + 1.0
        idx = np.arange(self.cfg.horizon)
        self.knots = np.stack([np.interp(times, idx, plan[:, a]) for a in range(plan.shape[1])], 1)

    def rollout(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Simulate plans [N, T, A] from the env's state: (states, sensordata) per physics step."""
        ctrl = np.repeat(self.task.controls(actions), self.task.substeps, axis=1)
        init = np.repeat(self.task.state()[None], len(actions), axis=0)
        from mujoco import rollout

        return rollout.rollout(self.task.model, self.datas, init, ctrl, persistent_pool=self.cfg.threads > 1)

    def plan(self) -> PlanStep:
        """One planning step from the env's current state."""
        cfg, lo, hi = self.cfg, self.task.action_low, self.task.action_high
        self.task.transition()
        self._warm_start()
        noise = self.rng.normal(0.0, cfg.noise_std, (cfg.samples - 1, *self.knots.shape)) * (hi - lo) / 2.0
        knots = np.clip(np.concatenate([self.knots[None], self.knots[None] + noise]), lo, hi)
        actions = np.einsum("tk,nka->nta", self.W, knots)
        states, sensors = self.rollout(actions)
        costs = np.nan_to_num(self.task.cost(actions, states, sensors), nan=np.inf)  # a NaN rollout never wins
        best = int(np.argmin(costs))
        if cfg.method == "mppi":
            spread = max(float(costs.max() - costs.min()), 1e-9)
            w = np.exp(-(costs - costs[best]) / (cfg.temperature * spread))
            self.knots = np.einsum("n,nka->ka", w / w.sum(), knots)
        else:
            self.knots = knots[best]
        plan = self.W @ self.knots
        return PlanStep(plan[0].astype(np.float32), plan.astype(np.float32), float(costs[best]), float(costs.std()))


def collect_mpc_episode(env, task: MpcTask, planner: SamplingPlanner, seed: int):
    """One episode of the MPC expert from ``env.reset(seed=seed)`` until the env ends it. Returns the ``Episode``
    with the planner's signals per step (``signals``: ``planned_actions`` [T, horizon, A], ``cost_to_go`` [T],
    ``cost_spread`` [T])."""
    from rlft.envs.oracles import episode_from_steps

    obs, _ = env.reset(seed=seed)
    task.reset()
    planner.reset()
    steps: list[tuple] = []  # (next obs, action, reward, terminated, truncated, success)
    plans: list[PlanStep] = []
    while True:
        plan = planner.plan()
        nxt, r, terminated, truncated, info = env.step(plan.action)
        steps.append((nxt, plan.action, float(r), bool(terminated), bool(truncated), bool(info.get("success", False))))
        plans.append(plan)
        if terminated or truncated:
            break
    obs_l, act_l, rew_l, term_l, trunc_l, succ_l = (list(c) for c in zip(*steps))
    ep = episode_from_steps([obs, *obs_l], act_l, rew_l, term_l, trunc_l, succ_l)
    signals = {
        "planned_actions": np.stack([p.plan for p in plans]),
        "cost_to_go": np.asarray([p.cost_to_go for p in plans], np.float32),
        "cost_spread": np.asarray([p.cost_spread for p in plans], np.float32),
    }
    return dataclasses.replace(ep, signals=signals)
