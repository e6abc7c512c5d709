"""Expert-data collection: ``run_collect(CollectConfig) -> Path`` (also ``python -m rlft.collect --help``).

Episodes are collected by a pool of worker processes (one env per process). Episode ``i`` is a pure function of
``(seed, i)`` (its env-reset seed, oracle RNG and noise all derive from ``SeedSequence([seed, i])``), so the dataset
does not depend on the number of workers. In ``demos`` mode with ``only_success`` the first ``num_episodes``
successful attempts *in index order* are kept. The dataset is written atomically (``rlft.data.h5io``).

ManiSkill3 tasks (``env_id`` such as ``LiftPegUpright-v1``; ``pip install -e ".[maniskill]"``): the expert is
ManiSkill's motion planner, its demos converted by ManiSkill's trajectory replay to state observations and
``pd_ee_delta_pose`` (``rlft.envs.maniskill_demos``); only ``mode='demos'`` without action noise. Attempt ``i`` uses
the same env seed as an OGBench attempt would; workers take batches of attempts (one simulator and one replay per
batch) and the first ``num_episodes`` successful attempts in index order are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from rlft.data.episodes import Episode
from rlft.errors import ConfigError, RlftError
from rlft.utils import exit_with_parent, remove_stale_temps

DEMO_DEFAULT_NOISE = 0.1
PLAY_DEFAULT_NOISE = 0.1
PLAY_DEFAULT_STEPS = 1000


@dataclasses.dataclass
class CollectConfig:
    env_id: str = "cube-single-singletask-v0"
    """Singletask environment id (OGBench cube domains: cube-single/double/triple/quadruple[-taskN]; ManiSkill3:
    LiftPegUpright-v1, PickCube-v1, PushCube-v1, PegInsertionSide-v1)."""
    mode: Literal["demos", "play", "policy"] = "demos"
    """'demos': task demonstrations in the task env (Markov oracle). 'play': OGBench-style task-agnostic play data
    (random targets, data-collection mode) relabelled with the task's reward. 'policy': rollouts of a trained rlft
    policy (``policy``) in the task env -- the data of a distillation (e.g. a DSRL-steered policy into a plain flow
    policy: collect its rollouts, then ``rlft train --config configs/bc.yaml --dataset`` on them)."""
    policy: str | None = None
    """mode 'policy': the saved policy file (.safetensors from rlft train/pipeline) to roll out."""
    deterministic: bool = True
    """mode 'policy': act with the policy's deterministic action (Gaussian mean, flow from zero noise, a steered
    policy from its latent actor's mean); False samples."""
    num_episodes: int = 100
    """Number of episodes to write (for demos with only_success: number of successful episodes)."""
    action_noise: float | None = None
    """demos: std of i.i.d. Gaussian action noise (default 0.1). play: noise level of the oracle (default 0.1; Plan
    oracle: its smoothed plan noise; Markov oracle: per-episode xi ~ U(0, noise), step noise xi*[1,1,1,3,10])."""
    oracle: Literal["auto", "markov", "plan"] = "auto"
    """Which OGBench oracle: auto = markov for demos, plan for play (OGBench's 'play'; 'markov' gives its 'noisy').
    ManiSkill tasks: auto = ManiSkill's motion planner (the only expert)."""
    noise_smoothing: float = 0.5
    """Gaussian smoothing (in steps) of the Plan oracle's noise."""
    p_stack_range: tuple[float, float] | None = None
    """play: per-episode stacking probability ~ U(lo, hi); None = OGBench's range for the cube count
    (single 0, double (0, 0.25), triple (0.05, 0.35), more (0.1, 0.5))."""
    max_episode_steps: int | None = None
    """Time limit in transitions; None = env default for demos, 1000 for play (= OGBench's 1001-row episodes, whose
    last row has no next observation)."""
    seed: int = 0
    """Base seed; episode i uses SeedSequence([seed, i])."""
    num_workers: int | None = None
    """Worker processes (None = os.cpu_count()); 1 runs in this process. Results do not depend on it."""
    out: str | None = None
    """Output .h5 path (a .json sidecar is written next to it); None = data/<env_id>-<mode>-<num_episodes>.h5."""
    only_success: bool = True
    """demos: keep only successful episodes (attempts stop after max_attempts_factor * num_episodes + 10)."""
    max_attempts_factor: float = 3.0
    """demos with only_success: give up after this many attempts per requested episode."""
    progress: bool = True
    """Show a progress bar and print a summary."""


@dataclasses.dataclass
class _Resolved:
    env_id: str
    mode: str
    oracle: str
    action_noise: float
    noise_smoothing: float
    p_stack_range: tuple[float, float] | None
    max_episode_steps: int | None
    seed: int


def _resolve(cfg: CollectConfig) -> _Resolved:
    if cfg.mode not in ("demos", "play", "policy"):
        raise ConfigError(f"collect.mode: {cfg.mode!r} is not one of ['demos', 'play', 'policy']")
    if cfg.oracle not in ("auto", "markov", "plan"):
        raise ConfigError(f"collect.oracle: {cfg.oracle!r} is not one of ['auto', 'markov', 'plan']")
    if not isinstance(cfg.num_episodes, int) or cfg.num_episodes < 1:
        raise ConfigError(f"collect.num_episodes: must be a positive integer, got {cfg.num_episodes!r}")
    noise = cfg.action_noise
    if noise is None:
        noise = DEMO_DEFAULT_NOISE if cfg.mode == "demos" else PLAY_DEFAULT_NOISE
    if not noise >= 0:
        raise ConfigError(f"collect.action_noise: must be >= 0, got {noise!r}")
    if cfg.max_episode_steps is not None and cfg.max_episode_steps < 1:
        raise ConfigError(f"collect.max_episode_steps: must be >= 1 or null, got {cfg.max_episode_steps!r}")
    if cfg.num_workers is not None and cfg.num_workers < 1:
        raise ConfigError(f"collect.num_workers: must be >= 1 or null, got {cfg.num_workers!r}")
    if cfg.p_stack_range is not None:
        lo, hi = cfg.p_stack_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"collect.p_stack_range: need 0 <= lo <= hi <= 1, got {cfg.p_stack_range!r}")
    oracle = cfg.oracle if cfg.oracle != "auto" else ("markov" if cfg.mode == "demos" else "plan")
    steps = cfg.max_episode_steps
    if steps is None and cfg.mode == "play":
        steps = PLAY_DEFAULT_STEPS
    return _Resolved(cfg.env_id, cfg.mode, oracle, float(noise), float(cfg.noise_smoothing),
                     tuple(cfg.p_stack_range) if cfg.p_stack_range is not None else None, steps, int(cfg.seed))


def _env_kwargs(r: _Resolved) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if r.mode == "play":
        kw.update(mode="data_collection", terminate_at_goal=False)
    if r.max_episode_steps is not None:
        kw["max_episode_steps"] = r.max_episode_steps
    return kw


# ------------------------------------------------------------------------------------------------ worker side
_W: dict[str, Any] = {}


def _worker_init(r: _Resolved) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rlft.envs import make_env
    from rlft.envs.oracles import make_oracle

    env = make_env(r.env_id, **_env_kwargs(r))
    _W.update(r=r, env=env, oracle=make_oracle(env, r.oracle, noise=r.action_noise,
                                               noise_smoothing=r.noise_smoothing))


def _pool_worker_init(r: _Resolved) -> None:
    from threadpoolctl import threadpool_limits

    exit_with_parent()  # a killed collect takes its workers with it (they would finish their episode first)
    threadpool_limits(1)  # see _results
    _worker_init(r)


def episode_seed(seed: int, index: int) -> tuple[int, np.random.Generator]:
    """The env-reset seed and the RNG of episode ``index`` under base ``seed`` (independent of worker count)."""
    ss = np.random.SeedSequence([int(seed), int(index)])
    env_seed = int(ss.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)
    return env_seed, np.random.default_rng(ss.spawn(1)[0])


def _worker_run(index: int) -> tuple[int, int, Episode, float]:
    from rlft.envs.oracles import collect_demo_episode, collect_play_episode

    r: _Resolved = _W["r"]
    env_seed, rng = episode_seed(r.seed, index)
    t0 = time.perf_counter()
    if r.mode == "demos":
        ep = collect_demo_episode(_W["env"], _W["oracle"], rng, action_noise=r.action_noise, seed=env_seed)
    else:
        ep = collect_play_episode(_W["env"], _W["oracle"], rng, oracle_kind=r.oracle, action_noise=r.action_noise,
                                  p_stack_range=r.p_stack_range, seed=env_seed)
    return index, env_seed, ep, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ driver side
def _results(r: _Resolved, n_workers: int, indices: Iterator[int]):
    # one BLAS thread for the oracles: their numpy maths then rounds the same whatever the caller's thread settings
    # (with several OpenBLAS threads the play oracle's actions differed by ~1e-8 and one 1000-step episode in 20
    # diverged; BENCHMARKS.md §2). In a worker process for good, in this process only while collecting.
    from threadpoolctl import threadpool_limits

    if n_workers == 1:
        with threadpool_limits(1):
            _worker_init(r)
            try:
                for i in indices:
                    yield _worker_run(i)
            finally:
                _W["env"].close()
                _W.clear()
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(n_workers, initializer=_pool_worker_init, initargs=(r,)) as pool:
        yield from pool.imap(_worker_run, indices, chunksize=1)
        # leaving the block terminates the pool (also when the consumer stops early)


def _checked_out(cfg: CollectConfig, kind: str) -> Path:
    """Validate ``num_episodes``/``num_workers``; the output path (default ``data/<env>-<kind>-<n>.h5``)."""
    if not isinstance(cfg.num_episodes, int) or cfg.num_episodes < 1:
        raise ConfigError(f"collect.num_episodes: must be a positive integer, got {cfg.num_episodes!r}")
    if cfg.num_workers is not None and cfg.num_workers < 1:
        raise ConfigError(f"collect.num_workers: must be >= 1 or null, got {cfg.num_workers!r}")
    out = Path(cfg.out) if cfg.out else Path("data") / f"{cfg.env_id}-{kind}-{cfg.num_episodes}.h5"
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise ConfigError(f"collect.out: {out} must end in .h5 or .hdf5")
    remove_stale_temps(out.parent)
    return out


def _first_kept(kept: dict[int, tuple[int, Episode]], n: int, n_attempts: int, console, what: str):
    """The first ``n`` kept attempts in index order: ``(indices, episodes)``; warns when fewer than ``n`` exist."""
    order = sorted(kept)[:n]
    if len(order) < n:
        console.print(f"[yellow]warning:[/] only {len(order)} successful {what} in {n_attempts} attempts "
                      f"(asked for {n}); writing those")
    return order, [kept[i][1] for i in order]


def run_collect(cfg: CollectConfig) -> Path:
    """Collect ``cfg.num_episodes`` episodes and write them to ``cfg.out`` (h5 + json sidecar); return the path."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from rlft.data.h5io import write_episodes
    from rlft.envs import env_family, env_info, make_env
    from rlft.envs.ogbench_env import task_goal_xyzs

    if cfg.mode == "policy" or cfg.policy is not None:
        return run_collect_policy(cfg)
    family = env_family(cfg.env_id)
    if family.collect is not None:  # a family with its own expert (ManiSkill: motion planning)
        return family.collect(cfg)
    r = _resolve(cfg)
    os.environ.setdefault("MUJOCO_GL", "egl")
    out = Path(cfg.out) if cfg.out else Path("data") / f"{r.env_id}-{r.mode}-{cfg.num_episodes}.h5"
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise ConfigError(f"collect.out: {out} must end in .h5 or .hdf5")
    remove_stale_temps(out.parent)  # the temporaries of an earlier collect that was killed while writing
    # validate the id / task before starting workers (EnvError names the id)
    probe = make_env(r.env_id, **_env_kwargs(r))
    try:
        task_goal_xyzs(probe)
        info = env_info(probe)
    finally:
        probe.close()

    n_workers = cfg.num_workers or os.cpu_count() or 1
    keep_failures = r.mode == "play" or not cfg.only_success
    max_attempts = cfg.num_episodes if keep_failures else int(cfg.max_attempts_factor * cfg.num_episodes) + 10
    n_workers = max(1, min(n_workers, max_attempts))

    console = Console(stderr=True, quiet=not cfg.progress)
    kept: dict[int, tuple[int, Episode]] = {}
    attempts: dict[int, bool] = {}
    steps = 0
    ep_seconds = 0.0
    t0 = time.time()
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not cfg.progress) as progress:
        task = progress.add_task(f"collect {r.mode} {r.env_id}", total=cfg.num_episodes, stats="")
        with contextlib.closing(_results(r, n_workers, iter(range(max_attempts)))) as stream:
            for index, seed, ep, secs in stream:
                attempts[index] = ep.success_once
                steps += len(ep)
                ep_seconds += secs
                if keep_failures or ep.success_once:
                    kept[index] = (seed, ep)
                # results arrive in index order (imap), so "first N successes by index" is worker-count independent
                rate = steps / max(ep_seconds, 1e-9)
                stats = f"success {sum(attempts.values())}/{len(attempts)}  {rate:.0f} steps/s/worker"
                progress.update(task, completed=min(len(kept), cfg.num_episodes), stats=stats)
                if len(kept) >= cfg.num_episodes:
                    break
    elapsed = time.time() - t0
    if not kept:
        raise RlftError(f"collect: no successful episode in {len(attempts)} attempts on {r.env_id} "
                        f"(action_noise={r.action_noise}); lower the noise or set only_success=false")
    order, episodes = _first_kept(kept, cfg.num_episodes, len(attempts), console, "episodes")

    env_kwargs = {"control_mode": "ee_delta_pose", **_env_kwargs(r)}
    info = {**info, "env_kwargs": env_kwargs}
    source = {
        "collector": "rlft.collect", "mode": r.mode, "oracle": r.oracle, "action_noise": r.action_noise,
        "noise_smoothing": r.noise_smoothing if r.oracle == "plan" else None,
        "p_stack_range": list(r.p_stack_range) if r.p_stack_range is not None else "ogbench_default",
        "seed": r.seed, "num_attempts": len(attempts), "only_success": not keep_failures,
        "max_episode_steps": r.max_episode_steps,
        "reward": "singletask reward of the state before each action ('pre')",
    }
    episode_info = [{"episode_seed": kept[i][0], "attempt_index": i} for i in order]
    write_episodes(out, episodes, info, extra=source, episode_info=episode_info)

    n_tr = sum(len(e) for e in episodes)
    succ = float(np.mean([e.success_once for e in episodes]))
    succ_end = float(np.mean([bool(e.success[-1]) for e in episodes]))
    attempt_rate = float(np.mean(list(attempts.values())))
    console.print(
        f"[bold green]wrote[/] {out}: {len(episodes)} episodes, {n_tr} transitions, "
        f"success {succ:.2f} (at end {succ_end:.2f}; attempts {len(attempts)}, attempt success {attempt_rate:.2f}), "
        f"mean length {n_tr / len(episodes):.1f}, {elapsed:.1f}s wall with {n_workers} worker(s), "
        f"{steps / max(ep_seconds, 1e-9):.0f} env steps/s per worker"
    )
    return out


# ------------------------------------------------------------------------------------------------ policy rollouts
def run_collect_policy(cfg: CollectConfig) -> Path:
    """``run_collect`` with a trained policy as the expert (``mode='policy'``): attempt ``i`` resets the env with
    the same seed as an oracle attempt would (``episode_seed(seed, i)``); attempts run in rounds (batched policy
    queries over parallel envs, ``num_workers`` processes) and, with ``only_success``, the first ``num_episodes``
    successful attempts in index order are kept. Observations are stored unstacked, actions as executed."""
    from rich.console import Console

    from rlft.data.h5io import write_episodes
    from rlft.envs import env_family, env_info, make_env
    from rlft.errors import CheckpointError
    from rlft.policies.base import load_policy, policy_extra
    from rlft.train.evaluate import rollout_episodes

    if cfg.mode != "policy":
        raise ConfigError(f"collect.policy: set only with mode 'policy' (mode is {cfg.mode!r})")
    if not cfg.policy:
        raise ConfigError("collect.policy: mode 'policy' needs the saved policy file to roll out (--policy PATH)")
    if cfg.action_noise:
        raise ConfigError("collect.action_noise: mode 'policy' adds no action noise (use deterministic false to "
                          "sample from the policy)")
    out = _checked_out(cfg, "policy")
    policy = load_policy(cfg.policy)
    extra = policy_extra(cfg.policy)
    if extra.get("env_id") not in (None, cfg.env_id):
        raise ConfigError(f"collect.env_id: {cfg.env_id!r}, but {cfg.policy} was trained on {extra['env_id']!r}")
    obs_horizon = int(extra.get("obs_horizon", 1))
    probe = make_env(cfg.env_id, obs_horizon=obs_horizon,
                     **({} if cfg.max_episode_steps is None else {"max_episode_steps": cfg.max_episode_steps}))
    try:
        info = env_info(probe)
    finally:
        probe.close()
    if info["obs_dim"] != policy.obs_dim or info["action_dim"] != policy.action_dim:
        raise CheckpointError(f"{cfg.policy}: policy has obs_dim {policy.obs_dim}, action_dim {policy.action_dim}; "
                              f"{cfg.env_id} (obs_horizon {obs_horizon}) has {info['obs_dim']}, {info['action_dim']}")

    keep_failures = not cfg.only_success
    max_attempts = cfg.num_episodes if keep_failures else int(cfg.max_attempts_factor * cfg.num_episodes) + 10
    n_workers = max(1, min(cfg.num_workers or os.cpu_count() or 1, cfg.num_episodes))
    family = env_family(cfg.env_id)
    if n_workers > 1 and family.prepare is not None:
        family.prepare()  # once here: the spawned workers inherit it (ManiSkill's Vulkan environment)
    console = Console(stderr=True, quiet=not cfg.progress)
    kept: dict[int, tuple[int, Episode]] = {}
    attempts: dict[int, bool] = {}
    t0 = time.time()
    with console.status(f"collect rollouts of {cfg.policy}") as status:
        while len(kept) < cfg.num_episodes and len(attempts) < max_attempts:
            start = len(attempts)  # a round asks for what is missing, at least 4 per worker
            indices = range(start, min(max_attempts, start + max(cfg.num_episodes - len(kept), 4 * n_workers)))
            seed_of = {episode_seed(cfg.seed, i)[0]: i for i in indices}
            for res, ep in rollout_episodes(policy, cfg.env_id, list(seed_of),
                                            extra.get("gamma", 0.99), obs_horizon, cfg.max_episode_steps,
                                            cfg.deterministic, n_workers):
                i = seed_of[res.seed]
                attempts[i] = res.success_once
                if keep_failures or res.success_once:
                    kept[i] = (res.seed, ep)
            status.update(f"collect rollouts: {min(len(kept), cfg.num_episodes)}/{cfg.num_episodes} kept, success "
                          f"{sum(attempts.values())}/{len(attempts)} attempts")
    elapsed = time.time() - t0
    if not kept:
        raise RlftError(f"collect: no successful rollout of {cfg.policy} in {len(attempts)} attempts on "
                        f"{cfg.env_id}; set only_success=false to keep failures")
    order, episodes = _first_kept(kept, cfg.num_episodes, len(attempts), console, "rollouts")
    info.pop("obs_horizon", None)  # stored observations are unstacked
    info["obs_dim"] = int(episodes[0].obs.shape[1])
    attempted = sorted(attempts)[: max(order) + 1]
    source = {"collector": "rlft.collect (policy rollouts)", "mode": "policy", "policy": str(cfg.policy),
              "policy_class": type(policy).__name__, "deterministic": cfg.deterministic, "seed": cfg.seed,
              "num_attempts": len(attempted), "only_success": not keep_failures,
              "success_rate": sum(attempts[i] for i in attempted) / len(attempted),
              "max_episode_steps": cfg.max_episode_steps, "reward": "the task env's reward"}
    episode_info = [{"episode_seed": kept[i][0], "attempt_index": i} for i in order]
    write_episodes(out, episodes, info, extra=source, episode_info=episode_info)
    n_tr = sum(len(e) for e in episodes)
    console.print(f"[bold green]wrote[/] {out}: {len(episodes)} rollouts, {n_tr} transitions, mean length "
                  f"{n_tr / len(episodes):.1f}; attempt success {source['success_rate']:.2f} "
                  f"({len(attempted)} attempts), {elapsed:.1f}s wall with {n_workers} worker(s)")
    return out


# ------------------------------------------------------------------------------------------------ ManiSkill3
def _ms_batch(job: tuple) -> list[tuple[int, int, Episode | None, float, dict[str, Any]]]:
    """Worker: motion-plan and convert a batch of attempts; one result per attempt, in index order."""
    import tempfile
    import threading

    from tqdm import tqdm

    from rlft.envs.maniskill_demos import converted_episodes, plan_and_convert, to_rlft_episode
    from rlft.envs.maniskill_env import DEFAULT_REWARD_MODE, REWARD_OFFSETS

    tqdm.set_lock(threading.RLock())  # ManiSkill's progress bars: no multiprocessing semaphore to leak at pool exit

    env_id, attempts, limit, keep_failures = job
    seeds = [s for _, s in attempts]
    with tempfile.TemporaryDirectory(prefix="rlft-mp-") as tmp:
        path, stats = plan_and_convert(env_id, seeds, tmp, tag=str(attempts[0][0]), max_episode_steps=limit,
                                       keep_failures=keep_failures)
        converted = converted_episodes(path) if path is not None else {}
    out = []
    for (index, seed), st in zip(attempts, stats):
        ep, why = None, "plan failed" if not st["plan_success"] else "replay failed"
        if seed in converted:
            ep, why = to_rlft_episode(converted[seed], limit, REWARD_OFFSETS.get(DEFAULT_REWARD_MODE, 0.0))
        st["status"] = why
        out.append((index, seed, ep, st["plan_seconds"] + st["convert_seconds"], st))
    return out


def run_collect_maniskill(cfg: CollectConfig) -> Path:
    """``run_collect`` for a ManiSkill3 task: motion-planned demos in state / pd_ee_delta_pose (see module doc)."""
    from rich.console import Console

    from rlft.data.h5io import write_episodes
    from rlft.envs import env_info, make_env
    from rlft.envs.maniskill_env import DEFAULT_CONTROL_MODE, DEFAULT_REWARD_MODE, REWARD_OFFSETS, prepare_workers

    if cfg.mode != "demos":
        raise ConfigError(f"collect.mode: {cfg.env_id} is a ManiSkill task; only 'demos' (motion planning) exists")
    if cfg.oracle != "auto":
        raise ConfigError("collect.oracle: ManiSkill tasks use ManiSkill's motion planner; leave oracle 'auto'")
    if cfg.action_noise:
        raise ConfigError("collect.action_noise: motion-planned ManiSkill demos are collected without action noise")
    out = _checked_out(cfg, "demos")
    prepare_workers()  # once here: the spawned workers inherit the Vulkan environment
    probe = make_env(cfg.env_id, **({} if cfg.max_episode_steps is None else
                                    {"max_episode_steps": cfg.max_episode_steps}))
    try:
        from rlft.envs.maniskill_demos import _solver

        _solver(cfg.env_id)  # EnvError now if there is no planner for the task
        info = env_info(probe)
    finally:
        probe.close()
    limit = int(info["max_episode_steps"])

    keep_failures = not cfg.only_success
    max_attempts = cfg.num_episodes if keep_failures else int(cfg.max_attempts_factor * cfg.num_episodes) + 10
    n_workers = max(1, min(cfg.num_workers or os.cpu_count() or 1, max_attempts))
    batch = max(1, min(10, -(-cfg.num_episodes // n_workers)))
    jobs = ((cfg.env_id, [(i, episode_seed(cfg.seed, i)[0]) for i in range(b, min(b + batch, max_attempts))], limit,
             keep_failures) for b in range(0, max_attempts, batch))

    console = Console(stderr=True, quiet=not cfg.progress)
    kept: dict[int, tuple[int, Episode]] = {}
    statuses: dict[int, str] = {}
    plan_ok: dict[int, bool] = {}
    ep_seconds = 0.0
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        status = stack.enter_context(console.status(f"collect demos {cfg.env_id} (motion planning, {n_workers} "
                                                    "worker(s))"))
        if n_workers == 1:
            stream = map(_ms_batch, jobs)
        else:  # leaving the stack terminates the pool (also when enough demos arrived early)
            pool = mp.get_context("spawn").Pool(n_workers, initializer=exit_with_parent)
            stream = stack.enter_context(pool).imap(_ms_batch, jobs, chunksize=1)
        for results in stream:
            for index, seed, ep, secs, st in results:
                statuses[index] = st["status"]
                plan_ok[index] = st["plan_success"]
                ep_seconds += secs
                if ep is not None and (keep_failures or st["status"] == "ok"):
                    kept[index] = (seed, ep)
            n_ok = sum(v == "ok" for v in statuses.values())
            status.update(f"collect demos {cfg.env_id}: {min(len(kept), cfg.num_episodes)}/{cfg.num_episodes} "
                          f"kept, success {n_ok}/{len(statuses)} attempts")
            if len(kept) >= cfg.num_episodes:
                break
    elapsed = time.time() - t0
    if not kept:
        raise RlftError(f"collect: no successful motion-planned episode in {len(statuses)} attempts on {cfg.env_id}")
    order, episodes = _first_kept(kept, cfg.num_episodes, len(statuses), console, "episodes")
    attempted = sorted(statuses)[: max(order) + 1] if order else []
    info = {**info, "env_kwargs": {"obs_mode": "state", "control_mode": DEFAULT_CONTROL_MODE,
                                   "reward_mode": DEFAULT_REWARD_MODE, "sim_backend": "physx_cpu",
                                   "max_episode_steps": limit}}
    n_success = sum(statuses[i] == "ok" for i in attempted)
    source = {
        "collector": "rlft.collect (ManiSkill motion planning)", "mode": "demos", "oracle": "maniskill_motionplanning",
        "action_noise": 0.0, "seed": cfg.seed, "num_attempts": len(attempted), "only_success": not keep_failures,
        "max_episode_steps": limit,
        "planner_success_rate": sum(plan_ok[i] for i in attempted) / max(1, len(attempted)),
        "success_rate": n_success / max(1, len(attempted)),
        "conversion": "mani_skill.trajectory.replay_trajectory -o state -c pd_ee_delta_pose --record-rewards "
                      "--use-first-env-state; episodes cut at the first terminated (= success) step",
        "reward": f"ManiSkill {DEFAULT_REWARD_MODE} {REWARD_OFFSETS.get(DEFAULT_REWARD_MODE, 0.0):+g}",
    }
    episode_info = [{"episode_seed": kept[i][0], "attempt_index": i} for i in order]
    write_episodes(out, episodes, info, extra=source, episode_info=episode_info)
    n_tr = sum(len(e) for e in episodes)
    console.print(
        f"[bold green]wrote[/] {out}: {len(episodes)} episodes, {n_tr} transitions, mean length "
        f"{n_tr / len(episodes):.1f}; attempts {len(attempted)}: planner success "
        f"{source['planner_success_rate']:.2f}, kept {source['success_rate']:.2f}; "
        f"{ep_seconds / max(1, len(statuses)):.2f}s per attempt per worker (plan + convert), {elapsed:.1f}s wall with "
        f"{n_workers} worker(s)"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    import sys

    import tyro

    cfg = tyro.cli(CollectConfig, args=argv, description=__doc__)
    try:
        run_collect(cfg)
    except RlftError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
