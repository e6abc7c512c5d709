"""Which of a task's own success conditions each evaluation episode reached: a failure breakdown for any task.

    OMP_NUM_THREADS=1 python scripts/episode_flags.py POLICY.safetensors --env-id PickCube-v1 [--obs-horizon 2]
        [--num-episodes 100] [--seed 100000] [--residual-dims 6]

ManiSkill tasks put the conditions of their success test in ``info`` at every step (``evaluate()``; PickCube-v1:
``is_grasped``, ``is_obj_placed``, ``is_robot_static`` and ``success = is_obj_placed & is_robot_static``). For every
boolean flag the script reports the fraction of episodes in which it was true at some step, so "the policy fails to
grasp" and "it grasps but does not place" read apart. The policy runs as ``rlft eval`` runs it (deterministic, the same
episode seeds ``seed + i``, 4 envs in lock step); ``success`` below is its ``success_once``.

``--residual-dims`` (a residual composite policy only) keeps the residual's correction on the listed action dimensions
and executes the base policy's action on the others (their bound set to float32's smallest normal number, 1.2e-38,
which leaves every base action of magnitude above 1e-30 unchanged to the last bit; the residual wrapper refuses a
zero bound): which corrections do the damage.
Prints one JSON object (docs/results.md, "PickCube: the residual's position corrections break the grasp").
"""

from __future__ import annotations

import argparse
import json

import gymnasium
import numpy as np

OFF = float(np.finfo(np.float32).tiny)
"""The bound of a dimension whose correction is switched off (see the module docstring)."""


class FlagRecorder(gymnasium.Wrapper):
    """Records, per episode, every boolean ``info`` flag that was true at some inner env step."""

    def __init__(self, env: gymnasium.Env, episodes: list[dict[str, bool]]):
        super().__init__(env)
        self.episodes, self.ever = episodes, {}

    def reset(self, **kwargs):
        self.ever = {}
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        for key, value in info.items():
            if isinstance(value, (bool, np.bool_)) or (isinstance(value, np.ndarray) and value.dtype == bool):
                self.ever[key] = self.ever.get(key, False) or bool(np.any(value))
        if terminated or truncated:
            self.episodes.append(dict(self.ever))
        return obs, reward, terminated, truncated, info


def flag_rates(episodes: list[dict[str, bool]]) -> dict[str, float]:
    """Fraction of episodes in which each flag was true at some step (a flag an episode never reported counts as
    false there)."""
    keys = sorted({k for e in episodes for k in e})
    return {k: round(float(np.mean([e.get(k, False) for e in episodes])), 4) for k in keys}


def keep_residual_dims(policy, dims: list[int]) -> None:
    """Switch a residual composite policy's correction off outside ``dims`` (those dimensions then execute the base's
    action; the bound becomes ``OFF``, as the wrapper refuses 0)."""
    if not hasattr(policy, "bound"):
        raise SystemExit(f"--residual-dims: {type(policy).__name__} is not a residual composite policy")
    if any(not 0 <= d < len(policy.bound) for d in dims):
        raise SystemExit(f"--residual-dims {dims}: the policy has {len(policy.bound)} action dimensions")
    policy.bound = [b if i in dims else OFF for i, b in enumerate(policy.bound)]


def episode_flags(policy, env_id: str, seeds: list[int], obs_horizon: int = 1, max_episode_steps: int | None = None):
    """Run ``policy`` on ``seeds`` as ``rlft eval`` does; returns (per-episode results, per-episode flags)."""
    from rlft.rollout import Evaluator

    episodes: list[dict[str, bool]] = []
    evaluator = Evaluator(env_id, obs_horizon=obs_horizon, max_episode_steps=max_episode_steps, n_parallel=4)
    evaluator.steps = [FlagRecorder(env, episodes) for env in evaluator.steps]
    try:
        return evaluator.run(policy, seeds), episodes
    finally:
        evaluator.close()


def parse_dims(text: str) -> list[int]:
    """``--residual-dims`` as a list of ints ("0,1,2" -> [0, 1, 2]); anything else exits with one message."""
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise SystemExit(f"--residual-dims {text!r}: expected comma-separated action dimensions, e.g. 0,1,2") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("policy", help="a policy checkpoint (.safetensors), as rlft eval takes")
    ap.add_argument("--env-id", required=True)
    ap.add_argument("--obs-horizon", type=int, default=1)
    ap.add_argument("--num-episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--residual-dims", default=None, help="comma-separated action dimensions, e.g. 0,1,2")
    args = ap.parse_args()

    from rlft.errors import RlftError
    from rlft.policies.base import load_policy
    from rlft.rollout import summarize

    try:  # a bad checkpoint, env id or observation history: the library's one-line message, as the CLI prints it
        policy = load_policy(args.policy)
        if args.residual_dims is not None:
            keep_residual_dims(policy, parse_dims(args.residual_dims))
        seeds = [args.seed + i for i in range(args.num_episodes)]
        results, episodes = episode_flags(policy, args.env_id, seeds, args.obs_horizon)
    except RlftError as e:
        raise SystemExit(f"error: {e}") from None
    out = {
        "policy": args.policy,
        "residual_dims": args.residual_dims,
        "num_episodes": len(results),
        "success_once": summarize(results)["eval/success_once"],
        "ever": flag_rates(episodes),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
