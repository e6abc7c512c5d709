"""Evaluation: N episodes with fixed seeds, reporting ``success_once``, ``success_at_end``, return and length.

* ``success_once``: the env reported success at any step of the episode;
* ``success_at_end``: it reported success at the episode's last step;
* ``return``: undiscounted sum of env rewards.

Episodes run in lock step over ``n_parallel`` environments in one process so the policy is queried in batches
(one forward for all live episodes per macro-step); ``num_workers > 1`` splits the seeds over processes.
The set of episode seeds is fixed (``seed + i``), so evaluations of different checkpoints are paired. Each episode is a
function of its seed alone, not of what the env ran before: the envs are built with their family's ``eval_kwargs``
(ManiSkill rebuilds its scene at every reset).
``rollout_episodes`` runs the same loop and also keeps every inner env step as an ``Episode`` (what ``rlft collect
--mode policy`` writes: the rollouts of a trained policy, e.g. to distil a steered DSRL policy into a plain one).
Videos are recorded by ``rlft.video`` (frames drawn below the chunk executor).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
from pathlib import Path

import gymnasium
import numpy as np
import torch

from rlft.data.episodes import Episode
from rlft.data.obs import Obs, stack_obs
from rlft.envs import env_family, make_env
from rlft.policies.base import Policy
from rlft.video import VIDEO_HELP, FrameRecorder, VideoSpec, save_videos


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


class StepRecorder(gymnasium.Wrapper):
    """Records every env step of an episode as an ``Episode`` while recording (passive otherwise).

    Sits directly on the observation-history env, below whatever executes the policy's actions (a chunk executor, a
    residual wrapper), so it keeps the actions the env actually received. Observations are stored unstacked (the
    newest of the ``obs_horizon`` stacked ones), as datasets hold them."""

    def __init__(self, env: gymnasium.Env, obs_horizon: int):
        super().__init__(env)
        self.obs_horizon = obs_horizon
        self._rec: dict[str, list] | None = None

    def _raw(self, o):
        """The newest of the stacked observations (and of the stacked frames, with cameras)."""
        if isinstance(o, Obs):
            return Obs(self._raw(o.state), {c: v[-1] for c, v in o.images.items()})
        o = np.asarray(o, dtype=np.float32).reshape(-1)
        return o[-(o.shape[0] // self.obs_horizon) :]

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self._rec is not None:
            self._rec = {"obs": [self._raw(obs)], "actions": [], "rewards": [], "success": [], "end": (False, False)}
        return obs, info

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        if self._rec is not None:
            rec = self._rec
            rec["obs"].append(self._raw(obs))
            rec["actions"].append(np.asarray(action, np.float32).reshape(-1))
            rec["rewards"].append(float(r))
            rec["success"].append(bool(info.get("success", False)))
            rec["end"] = (bool(term), bool(trunc))
        return obs, r, term, trunc, info

    def start(self) -> None:
        """Record from the next ``reset`` on."""
        self._rec = {}

    def episode(self) -> Episode:
        """The episode recorded since the last reset."""
        rec = self._rec
        T = len(rec["actions"])
        terminated, truncated = np.zeros(T, bool), np.zeros(T, bool)
        terminated[-1], truncated[-1] = rec["end"]
        obs, images = rec["obs"], None
        if isinstance(obs[0], Obs):
            images = {c: np.stack([o.images[c] for o in obs]) for c in obs[0].images}
            obs = [o.state for o in obs]
        return Episode(
            np.stack(obs),
            np.stack(rec["actions"]),
            np.asarray(rec["rewards"], np.float32),
            terminated,
            truncated,
            np.asarray(rec["success"], bool),
            images=images,
        )


class Evaluator:
    """Holds ``n_parallel`` envs and runs seeded evaluation episodes with a policy, each env driven through the
    policy's ``executor`` (a chunk executor for chunk policies, a per-step residual wrapper for residual ones)."""

    def __init__(
        self,
        env_id: str,
        gamma: float = 0.99,
        obs_horizon: int = 1,
        max_episode_steps: int | None = None,
        n_parallel: int = 4,
        video: VideoSpec | None = None,
    ):
        kwargs = dict(env_family(env_id).eval_kwargs)  # episodes that do not depend on the ones before
        if max_episode_steps is not None:
            kwargs["max_episode_steps"] = max_episode_steps
        self.recorders: list[FrameRecorder | None] = []
        self.steps: list[StepRecorder] = []
        for _ in range(n_parallel):
            env = make_env(env_id, obs_horizon=obs_horizon, **kwargs)
            rec = None
            if video is not None and video.episodes > 0:
                env = rec = FrameRecorder(env, video.width, video.height, video.frame_skip)
            self.recorders.append(rec)
            self.steps.append(StepRecorder(env, obs_horizon))
        self.gamma = gamma
        self.videos: dict[int, list[np.ndarray]] = {}
        """Frames of the episodes recorded by the last ``run`` (seed -> frames)."""
        self.episodes: dict[int, Episode] = {}
        """Every inner step of the last ``run``'s episodes (seed -> Episode) when it was asked to keep them."""
        self.video_error: str | None = None
        """Why recording failed (then the evaluation went on without video)."""

    def _start_recording(self, i: int) -> bool:
        try:
            self.recorders[i].start()
            return True
        except Exception as e:  # no GL context (EGL/OSMesa missing): evaluate anyway, say why there is no video
            self.recorders[i].frames = None
            self.video_error = f"{type(e).__name__}: {e}"
            return False

    @torch.no_grad()
    def run(
        self,
        policy: Policy,
        seeds: list[int],
        deterministic: bool = True,
        record_seeds: set[int] | frozenset[int] = frozenset(),
        keep_episodes: bool = False,
    ) -> list[EpisodeResult]:
        results: list[EpisodeResult] = []
        pending = list(seeds)
        envs = [policy.executor(e, self.gamma) for e in self.steps]  # thin wrappers over the held envs
        n = len(envs)
        obs: list = [None] * n
        state: list = [None] * n  # per env: [seed, success_once, success_at_end, ret, length] or None (idle)
        self.videos, self.episodes = {}, {}
        recording = [False] * n
        for rec in self.steps:
            rec._rec = None
        while pending or any(s is not None for s in state):
            for i in range(n):
                if state[i] is None and pending:
                    s = pending.pop(0)
                    if keep_episodes:
                        self.steps[i].start()
                    obs[i], _ = envs[i].reset(seed=s)
                    state[i] = [s, False, False, 0.0, 0]
                    if s in record_seeds and self.recorders[i] is not None and self.video_error is None:
                        recording[i] = self._start_recording(i)
            live = [i for i in range(n) if state[i] is not None]
            chunks = policy.act(stack_obs([obs[i] for i in live]), deterministic=deterministic).cpu().numpy()
            for j, i in enumerate(live):
                obs[i], _, term, trunc, info = envs[i].step(chunks[j])
                st = state[i]
                st[1] = st[1] or bool(info["success"])
                st[2] = bool(info["success_at_end"])
                st[3] += float(np.sum(info["env_rewards"]))
                st[4] += int(info["k"])
                if term or trunc:
                    results.append(EpisodeResult(*st))
                    state[i] = None
                    if keep_episodes:
                        self.episodes[st[0]] = self.steps[i].episode()
                    if recording[i]:
                        self.videos[st[0]] = self.recorders[i].stop()
                        recording[i] = False
        results.sort(key=lambda r: r.seed)
        return results

    def close(self) -> None:
        for e in self.steps:
            e.close()


def _worker(args):
    cls_name, kwargs, encoder, state, env_kw, seeds, deterministic, n_parallel, record, keep = args
    torch.set_num_threads(1)
    import rlft.policies  # noqa: F401
    from rlft.policies.base import POLICY_CLASSES

    policy = POLICY_CLASSES[cls_name](**kwargs)
    if encoder is not None:
        from rlft.nets.encoders import EncoderSpec

        policy.attach_encoder(EncoderSpec(**encoder))
    policy.load_state_dict(state)
    policy.eval()
    ev = Evaluator(n_parallel=n_parallel, **env_kw)
    try:
        return ev.run(policy, seeds, deterministic, record, keep), ev.videos, ev.video_error, ev.episodes
    finally:
        ev.close()


def _run_episodes(
    policy: Policy,
    seeds: list[int],
    env_kw: dict,
    deterministic: bool,
    num_workers: int,
    parallel_envs: int,
    record: frozenset[int],
    keep_episodes: bool,
    evaluator: Evaluator | None = None,
):
    """Run ``seeds`` in this process (``num_workers <= 1``) or sharded over spawned processes; returns
    ``(results sorted by seed, videos, video errors, episodes)``."""
    was_training = policy.training
    policy.eval()
    try:
        if num_workers <= 1:
            ev = evaluator or Evaluator(n_parallel=min(parallel_envs, len(seeds)), **env_kw)
            results = ev.run(policy, seeds, deterministic, record, keep_episodes)
            errors: list[str] = []
            if ev.video_error and not getattr(ev, "_video_warned", False):  # say it once per Evaluator
                errors, ev._video_warned = [ev.video_error], True
            out = results, ev.videos, errors, ev.episodes
            if evaluator is None:
                ev.close()
            return out
        state = {k: v.detach().cpu() for k, v in policy.state_dict().items()}
        shards = [seeds[w::num_workers] for w in range(num_workers)]
        jobs = [
            (
                type(policy).__name__,
                policy.kwargs,
                None if policy.encoder is None else dataclasses.asdict(policy.encoder.spec),
                state,
                env_kw,
                sh,
                deterministic,
                min(parallel_envs, max(1, len(sh))),
                record & set(sh),
                keep_episodes,
            )
            for sh in shards
            if sh
        ]
        from rlft.utils import exit_with_parent

        with mp.get_context("spawn").Pool(len(jobs), initializer=exit_with_parent) as pool:  # die with this process
            parts = pool.map(_worker, jobs)
        videos: dict[int, list[np.ndarray]] = {}
        episodes: dict[int, Episode] = {}
        errors = []
        for _, vids, err, eps in parts:
            videos.update(vids)
            episodes.update(eps)
            errors += [err] if err else []
        return sorted((r for part in parts for r in part[0]), key=lambda r: r.seed), videos, errors, episodes
    finally:
        policy.train(was_training)


def evaluate_policy(
    policy: Policy,
    env_id: str,
    num_episodes: int,
    seed: int,
    gamma: float = 0.99,
    obs_horizon: int = 1,
    max_episode_steps: int | None = None,
    deterministic: bool = True,
    num_workers: int = 1,
    evaluator: Evaluator | None = None,
    parallel_envs: int = 4,
    video: VideoSpec | None = None,
    video_dir: str | Path | None = None,
    video_prefix: str = "",
) -> tuple[dict[str, float], list[EpisodeResult]]:
    """Evaluate ``policy`` on episodes seeded ``seed .. seed+num_episodes-1``; returns (summary, per-episode).

    With ``video.episodes > 0`` and a ``video_dir``, the first ``video.episodes`` episodes are written there as mp4
    (``evaluator``, when given, must have been built with the same ``video`` spec)."""
    seeds = [seed + i for i in range(num_episodes)]
    want_video = video is not None and video.episodes > 0 and video_dir is not None
    record = frozenset(seeds[: video.episodes]) if want_video else frozenset()
    env_kw = dict(
        env_id=env_id,
        gamma=gamma,
        obs_horizon=obs_horizon,
        max_episode_steps=max_episode_steps,
        video=video if want_video else None,
    )
    results, videos, errors, _ = _run_episodes(
        policy, seeds, env_kw, deterministic, num_workers, parallel_envs, record, False, evaluator
    )
    if want_video:
        if videos:
            save_videos(videos, {r.seed: r.success_once for r in results}, video_dir, video_prefix, video.fps)
        if errors:
            from rich.console import Console
            from rich.markup import escape

            Console(stderr=True, soft_wrap=True).print(
                f"[yellow]warning[/yellow] no evaluation video: offscreen rendering failed ({escape(errors[0])}); "
                f"{VIDEO_HELP}",
                highlight=False,
            )
    return summarize(results), results


def rollout_episodes(
    policy: Policy,
    env_id: str,
    seeds: list[int],
    gamma: float = 0.99,
    obs_horizon: int = 1,
    max_episode_steps: int | None = None,
    deterministic: bool = True,
    num_workers: int = 1,
    parallel_envs: int = 4,
) -> list[tuple[EpisodeResult, Episode]]:
    """Roll ``policy`` out on one episode per env-reset seed (the evaluation loop) and keep every inner env step:
    ``[(result, Episode)]`` in seed order, the Episode with unstacked observations and the executed actions."""
    env_kw = dict(env_id=env_id, gamma=gamma, obs_horizon=obs_horizon, max_episode_steps=max_episode_steps, video=None)
    results, _, _, episodes = _run_episodes(
        policy, list(seeds), env_kw, deterministic, num_workers, parallel_envs, frozenset(), True
    )
    return [(r, episodes[r.seed]) for r in results]
