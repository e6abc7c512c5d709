"""Expert sources built on OGBench's shipped oracles (cube domains).

Two sources, each ``collect_*_episode(env, oracle, rng, ...) -> Episode``:

* **Task demos** (``collect_demo_episode``): the singletask env in task mode driven by OGBench's
  ``CubeMarkovOracle`` (optionally with i.i.d. Gaussian action noise sigma, clipped to [-1, 1]). In task mode OGBench's
  ``info`` lacks the oracle's inputs ``privileged/target_block``, ``..._pos``, ``..._yaw``; ``TaskTargetSelector``
  fills them from the task's goals and drives multi-cube tasks cube by cube (see its docstring). Recorded rewards,
  ``terminated`` and ``success`` are the env's own (singletask, success timing 'pre').
* **Play data** (``collect_play_episode``), as OGBench builds its task-agnostic datasets: the env in
  ``mode='data_collection'`` with ``terminate_at_goal=False``; OGBench's *Plan* oracle (noise 0.1, smoothing 0.5: the
  "play" datasets) or the *Markov* oracle with per-episode noise level xi ~ U(0, noise) and per-step Gaussian noise
  of std [xi, xi, xi, 3 xi, 10 xi] (the "noisy" datasets); a per-episode stacking probability p_stack; a new random
  target (``set_new_target(p_stack)``) each time the oracle reports done. The recorded reward/success are those of
  the **single task** (not of the random targets): reward = (#cubes within 0.04 of the task goals) - #cubes, success
  = all cubes at goal, evaluated on the state *before* the action, exactly as the singletask env (and OGBench's
  ``relabel_dataset``) computes them. ``terminated`` is always False (the play env never ends an episode; we bootstrap
  through), ``truncated`` is True on the last step. Observations have the same layout as in task mode (the state
  observation does not contain the goal).

The OGBench oracles draw from numpy's *global* RNG; every episode seeds it from ``rng`` (and restores the previous
global state afterwards), and resets the env with a seed from ``rng``, so an episode is a pure function of its seed.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal

import gymnasium
import numpy as np

from rlft.data.episodes import Episode
from rlft.data.obs import Obs
from rlft.envs import ogbench_env
from rlft.errors import EnvError

OracleKind = Literal["markov", "plan"]

# OGBench's per-episode stacking probability ranges (its generator, by number of cubes).
_P_STACK_RANGES = {1: (0.0, 0.0), 2: (0.0, 0.25), 3: (0.05, 0.35)}
# Per-dimension scale of the Markov ("noisy") play noise: x, y, z, yaw, gripper.
MARKOV_PLAY_NOISE_SCALE = np.array([1.0, 1.0, 1.0, 3.0, 10.0])


def default_p_stack_range(n_cubes: int) -> tuple[float, float]:
    return _P_STACK_RANGES.get(n_cubes, (0.1, 0.5))


def make_oracle(env: gymnasium.Env, kind: OracleKind = "markov", noise: float = 0.1, noise_smoothing: float = 0.5):
    """OGBench's ``CubeMarkovOracle`` (closed loop) or ``CubePlanOracle`` (plan + smoothed noise) for a cube env."""
    if not ogbench_env.is_cube_env(env):
        raise EnvError(f"{ogbench_env._env_name(env)}: oracles are implemented for OGBench cube environments only")
    if kind == "markov":
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

        return CubeMarkovOracle(env=env)
    if kind == "plan":
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

        return CubePlanOracle(env=env, noise=float(noise), noise_smoothing=float(noise_smoothing))
    raise EnvError(f"unknown oracle kind {kind!r}; expected 'markov' or 'plan'")


@contextlib.contextmanager
def seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (used by OGBench's oracles) for the block, then restore the previous state."""
    state = np.random.get_state()
    np.random.seed(seed % (2**32))
    try:
        yield
    finally:
        np.random.set_state(state)


class TaskTargetSelector:
    """Fill the Markov oracle's target keys in task mode, driving a multi-cube task one cube at a time.

    Each time the current target is reached (cube within 0.04 m of it) and the gripper is open (contact < 0.1), or
    when there is no target yet, the next cube is chosen: the first cube (by index) not at its goal that (a) has no
    cube on top of it, (b) whose goal is supported (on the table, or on a cube already at its goal) and (c) whose goal
    is not occupied by another cube. If every remaining cube is blocked (e.g. a swap), the first clear one is moved to
    a free parking spot first. Target yaw is 0 (cubes are 90-degree symmetric).
    """

    def __init__(self, goal_xyzs: np.ndarray, tol: float = ogbench_env.CUBE_SUCCESS_TOL):
        self.goals = np.asarray(goal_xyzs, dtype=np.float64)
        self.n = len(self.goals)
        self.tol = tol
        self.block: int | None = None
        self.target: np.ndarray | None = None

    def reset(self) -> None:
        self.block, self.target = None, None

    def _positions(self, info: dict[str, Any]) -> np.ndarray:
        return np.stack([np.asarray(info[f"privileged/block_{i}_pos"], np.float64) for i in range(self.n)])

    def _choose(self, pos: np.ndarray) -> tuple[int, np.ndarray] | None:
        at_goal = np.linalg.norm(pos - self.goals, axis=-1) <= self.tol
        todo = [i for i in range(self.n) if not at_goal[i]]
        if not todo:
            return None

        def clear(i: int) -> bool:
            return not any(
                j != i and pos[j, 2] > pos[i, 2] + 0.02 and np.linalg.norm(pos[j, :2] - pos[i, :2]) < 0.03
                for j in range(self.n)
            )

        def supported(i: int) -> bool:
            g = self.goals[i]
            if g[2] < 0.03:
                return True
            return any(
                j != i and at_goal[j] and self.goals[j, 2] < g[2] and np.linalg.norm(self.goals[j, :2] - g[:2]) < 0.02
                for j in range(self.n)
            )

        def free(i: int) -> bool:
            g = self.goals[i]
            return not any(
                j != i and np.linalg.norm(pos[j, :2] - g[:2]) < 0.05 and abs(pos[j, 2] - g[2]) < 0.03
                for j in range(self.n)
            )

        for i in todo:
            if clear(i) and supported(i) and free(i):
                return i, self.goals[i].copy()
        movable = [i for i in todo if clear(i)] or todo
        return movable[0], self._parking_spot(pos)

    def _parking_spot(self, pos: np.ndarray) -> np.ndarray:
        xs, ys = np.linspace(0.32, 0.53, 8), np.linspace(-0.25, 0.25, 11)
        grid = np.array([[x, y] for x in xs for y in ys])
        others = np.concatenate([pos[:, :2], self.goals[:, :2]])
        score = np.linalg.norm(grid[:, None, :] - others[None], axis=-1).min(axis=1)
        best = grid[int(np.argmax(score))]
        return np.array([best[0], best[1], 0.02])

    def fill(self, info: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Return (info with the target keys filled, whether the target changed)."""
        pos = self._positions(info)
        changed = False
        gripper_open = float(np.asarray(info["proprio/gripper_contact"]).reshape(-1)[0]) < 0.1
        reached = self.block is not None and np.linalg.norm(pos[self.block] - self.target) <= self.tol
        if self.block is None or (reached and gripper_open):
            choice = self._choose(pos)
            if choice is None and self.block is None:  # every cube already at its goal: hold cube 0 there
                choice = (0, self.goals[0].copy())
            if choice is not None and (
                self.block is None or choice[0] != self.block or not np.allclose(choice[1], self.target)
            ):
                self.block, self.target = choice
                changed = True
        info = dict(info)
        info["privileged/target_block"] = self.block
        info["privileged/target_block_pos"] = self.target.copy()
        info["privileged/target_block_yaw"] = np.zeros(1)
        return info, changed


def _new_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def collect_demo_episode(
    env: gymnasium.Env, oracle: Any, rng: np.random.Generator, *, action_noise: float = 0.0, seed: int | None = None
) -> Episode:
    """One task demo: reset (seeded), run the oracle with N(0, action_noise^2) noise until terminated/truncated.

    ``env`` is the singletask env in task mode (e.g. ``make_env('cube-double-singletask-v0')``). Rewards,
    ``terminated``, ``truncated`` and ``success`` are the env's own.
    """
    goals = ogbench_env.task_goal_xyzs(env)
    selector = TaskTargetSelector(goals)
    seed = _new_seed(rng) if seed is None else int(seed)
    obs_l, act_l, rew_l, term_l, trunc_l, succ_l = [], [], [], [], [], []
    with seeded_global_numpy(seed):
        obs, info = env.reset(seed=seed)
        info, _ = selector.fill(info)
        oracle.reset(obs, info)
        obs_l.append(obs)
        while True:
            a = np.asarray(oracle.select_action(obs, info), dtype=np.float64)
            if action_noise > 0:
                a = a + rng.normal(0.0, action_noise, size=a.shape)
            a = np.clip(a, -1.0, 1.0).astype(np.float32)
            obs, r, terminated, truncated, info = env.step(a)
            obs_l.append(obs)
            act_l.append(a)
            rew_l.append(float(r))
            term_l.append(bool(terminated))
            trunc_l.append(bool(truncated))
            succ_l.append(bool(info.get("success", False)))
            if terminated or truncated:
                break
            info, changed = selector.fill(info)
            if changed:
                oracle.reset(obs, info)
    return episode_from_steps(obs_l, act_l, rew_l, term_l, trunc_l, succ_l)


def collect_play_episode(
    env: gymnasium.Env,
    oracle: Any,
    rng: np.random.Generator,
    *,
    oracle_kind: OracleKind = "plan",
    action_noise: float = 0.1,
    p_stack_range: tuple[float, float] | None = None,
    seed: int | None = None,
) -> Episode:
    """One OGBench-style play episode relabelled with the single task's reward (see the module docstring).

    ``env`` must be a singletask id created in data-collection mode, e.g. ``make_play_env(env_id, 1000)``; it runs
    until its time limit. For ``oracle_kind='markov'`` the per-step noise is N(0, (xi * [1,1,1,3,10])^2) with
    xi ~ U(0, action_noise) per episode; the Plan oracle carries its own smoothed noise (set at ``make_oracle``).
    """
    u = env.unwrapped
    if getattr(u, "_mode", None) != "data_collection":
        raise EnvError(f"{ogbench_env._env_name(env)}: play collection needs mode='data_collection' (make_play_env)")
    goals = ogbench_env.task_goal_xyzs(env)
    lo, hi = p_stack_range if p_stack_range is not None else default_p_stack_range(len(goals))
    seed = _new_seed(rng) if seed is None else int(seed)
    p_stack = float(rng.uniform(lo, hi))
    xi = float(rng.uniform(0.0, action_noise)) if oracle_kind == "markov" else 0.0
    obs_l, act_l, rew_l, term_l, trunc_l, succ_l = [], [], [], [], [], []
    with seeded_global_numpy(seed):
        obs, info = env.reset(seed=seed)
        oracle.reset(obs, info)
        obs_l.append(obs)
        while True:
            r, s = ogbench_env.current_task_reward(env, goals)  # state before the action ('pre')
            a = np.asarray(oracle.select_action(obs, info), dtype=np.float64)
            if xi > 0:
                a = a + rng.normal(0.0, 1.0, size=a.shape) * xi * MARKOV_PLAY_NOISE_SCALE
            a = np.clip(a, -1.0, 1.0).astype(np.float32)
            obs, _, terminated, truncated, info = env.step(a)
            obs_l.append(obs)
            act_l.append(a)
            rew_l.append(r)
            term_l.append(False)
            trunc_l.append(bool(truncated or terminated))
            succ_l.append(s)
            if terminated or truncated:
                break
            if oracle.done:
                _, info = u.set_new_target(p_stack=p_stack)
                oracle.reset(obs, info)
    return episode_from_steps(obs_l, act_l, rew_l, term_l, trunc_l, succ_l)


def make_play_env(env_id: str, max_episode_steps: int = 1000, **kwargs: Any) -> gymnasium.Env:
    """The singletask ``env_id`` in OGBench's data-collection mode (random targets, never terminates)."""
    from rlft.envs import make_env

    return make_env(
        env_id, mode="data_collection", terminate_at_goal=False, max_episode_steps=max_episode_steps, **kwargs
    )


def episode_from_steps(obs_l, act_l, rew_l, term_l, trunc_l, succ_l) -> Episode:
    """The recorded steps as an ``Episode``; camera observations (``Obs``) keep their newest frame per step."""
    images = None
    if isinstance(obs_l[0], Obs):
        images = {c: np.stack([o.images[c][-1] for o in obs_l]) for c in obs_l[0].images}
        obs_l = [o.state for o in obs_l]
    return Episode(
        images=images,
        obs=np.stack(obs_l).astype(np.float32),
        actions=np.stack(act_l).astype(np.float32),
        rewards=np.asarray(rew_l, np.float32),
        terminated=np.asarray(term_l, bool),
        truncated=np.asarray(trunc_l, bool),
        success=np.asarray(succ_l, bool),
    )
