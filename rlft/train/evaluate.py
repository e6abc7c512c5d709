"""Evaluation: N episodes with fixed seeds, reporting ``success_once``, ``success_at_end``, return and length.

* ``success_once``: the env reported success at any step of the episode;
* ``success_at_end``: it reported success at the episode's last step;
* ``return``: undiscounted sum of env rewards.

Episodes run in lock step over ``n_parallel`` environments in one process so the policy is queried in batches
(one forward for all live episodes per macro-step); ``num_workers > 1`` splits the seeds over processes.
The set of episode seeds is fixed (``seed + i``), so evaluations of different checkpoints are paired.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp

import numpy as np
import torch

from rlft.envs import make_env
from rlft.envs.wrappers import ChunkExecutor
from rlft.policies.base import Policy


@dataclasses.dataclass
class EpisodeResult:
    seed: int
    success_once: bool
    success_at_end: bool
    ret: float
    length: int


def summarize(results: list[EpisodeResult]) -> dict[str, float]:
    return {
        "eval/success_once": float(np.mean([r.success_once for r in results])),
        "eval/success_at_end": float(np.mean([r.success_at_end for r in results])),
        "eval/return": float(np.mean([r.ret for r in results])),
        "eval/episode_length": float(np.mean([r.length for r in results])),
        "eval/num_episodes": float(len(results)),
    }


class Evaluator:
    """Holds ``n_parallel`` chunked envs and runs seeded evaluation episodes with a policy."""

    def __init__(self, env_id: str, act_horizon: int, gamma: float = 0.99, obs_horizon: int = 1,
                 max_episode_steps: int | None = None, n_parallel: int = 4):
        kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        self.envs = [
            ChunkExecutor(make_env(env_id, obs_horizon=obs_horizon, **kwargs), act_horizon, gamma)
            for _ in range(n_parallel)
        ]

    @torch.no_grad()
    def run(self, policy: Policy, seeds: list[int], deterministic: bool = True) -> list[EpisodeResult]:
        results: list[EpisodeResult] = []
        pending = list(seeds)
        n = len(self.envs)
        obs: list = [None] * n
        state: list = [None] * n  # per env: [seed, success_once, success_at_end, ret, length] or None (idle)
        while pending or any(s is not None for s in state):
            for i in range(n):
                if state[i] is None and pending:
                    s = pending.pop(0)
                    obs[i], _ = self.envs[i].reset(seed=s)
                    state[i] = [s, False, False, 0.0, 0]
            live = [i for i in range(n) if state[i] is not None]
            chunks = policy.act(np.stack([obs[i] for i in live]), deterministic=deterministic).cpu().numpy()
            for j, i in enumerate(live):
                obs[i], _, term, trunc, info = self.envs[i].step(chunks[j])
                st = state[i]
                st[1] = st[1] or bool(info["success"])
                st[2] = bool(info["success_at_end"])
                st[3] += float(np.sum(info["env_rewards"]))
                st[4] += int(info["k"])
                if term or trunc:
                    results.append(EpisodeResult(*st))
                    state[i] = None
        results.sort(key=lambda r: r.seed)
        return results

    def close(self) -> None:
        for e in self.envs:
            e.close()


def _worker(args):
    cls_name, kwargs, state, env_kw, seeds, deterministic, n_parallel = args
    torch.set_num_threads(1)
    from rlft.policies.base import POLICY_CLASSES
    import rlft.policies  # noqa: F401

    policy = POLICY_CLASSES[cls_name](**kwargs)
    policy.load_state_dict(state)
    policy.eval()
    ev = Evaluator(n_parallel=n_parallel, **env_kw)
    try:
        return ev.run(policy, seeds, deterministic)
    finally:
        ev.close()


def evaluate_policy(policy: Policy, env_id: str, act_horizon: int, num_episodes: int, seed: int, gamma: float = 0.99,
                    obs_horizon: int = 1, max_episode_steps: int | None = None, deterministic: bool = True,
                    num_workers: int = 1, evaluator: Evaluator | None = None, parallel_envs: int = 4) -> tuple[dict[str, float], list[EpisodeResult]]:
    """Evaluate ``policy`` on episodes seeded ``seed .. seed+num_episodes-1``; returns (summary, per-episode)."""
    seeds = [seed + i for i in range(num_episodes)]
    was_training = policy.training
    policy.eval()
    try:
        if num_workers <= 1:
            ev = evaluator or Evaluator(env_id, act_horizon, gamma, obs_horizon, max_episode_steps,
                                        n_parallel=min(parallel_envs, num_episodes))
            results = ev.run(policy, seeds, deterministic)
            if evaluator is None:
                ev.close()
        else:
            state = {k: v.detach().cpu() for k, v in policy.state_dict().items()}
            env_kw = dict(env_id=env_id, act_horizon=act_horizon, gamma=gamma, obs_horizon=obs_horizon,
                          max_episode_steps=max_episode_steps)
            shards = [seeds[w::num_workers] for w in range(num_workers)]
            jobs = [(type(policy).__name__, policy.kwargs, state, env_kw, sh, deterministic, min(parallel_envs, max(1, len(sh))))
                    for sh in shards if sh]
            with mp.get_context("spawn").Pool(len(jobs)) as pool:
                results = sorted((r for part in pool.map(_worker, jobs) for r in part), key=lambda r: r.seed)
    finally:
        policy.train(was_training)
    return summarize(results), results
