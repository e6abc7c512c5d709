"""What every collector shares: the config, per-episode seeds, the output path check, the kept-episode order."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from rlft.collect.mpc import MpcConfig
from rlft.data.episodes import Episode
from rlft.errors import ConfigError
from rlft.utils import remove_stale_temps

DEMO_DEFAULT_NOISE = 0.1
PLAY_DEFAULT_NOISE = 0.1
PLAY_DEFAULT_STEPS = 1000


@dataclasses.dataclass
class CollectConfig:
    env_id: str = "cube-single-singletask-v0"
    """Singletask environment id (OGBench cube domains: cube-single/double/triple/quadruple[-taskN]; ManiSkill3:
    LiftPegUpright-v1, PickCube-v1, PushCube-v1, PegInsertionSide-v1)."""
    mode: Literal["demos", "play", "policy", "mpc"] = "demos"
    """'demos': task demonstrations in the task env (Markov oracle). 'play': OGBench-style task-agnostic play data
    (random targets, data-collection mode) relabelled with the task's reward. 'policy': rollouts of a trained rlft
    policy (``policy``) in the task env -- the data of a distillation (e.g. a DSRL-steered policy into a plain flow
    policy: collect its rollouts, then ``rlft train --config configs/bc.yaml --dataset`` on them). 'mpc': task
    demonstrations of a sampling-based MPC expert that plans with MuJoCo's rollouts (OGBench cube tasks)."""
    mpc: MpcConfig = dataclasses.field(default_factory=MpcConfig)
    """mode 'mpc' (OGBench cube tasks): the sampling-based MPC expert's planner (rlft.collect.mpc, the task's cost in
    rlft.collect.mpc_cube); each episode also stores the planner's signals (planned actions, predicted cost-to-go,
    sampled-cost spread) under ``signals/``."""
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


def episode_seed(seed: int, index: int) -> tuple[int, np.random.Generator]:
    """The env-reset seed and the RNG of episode ``index`` under base ``seed`` (independent of worker count)."""
    ss = np.random.SeedSequence([int(seed), int(index)])
    env_seed = int(ss.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)
    return env_seed, np.random.default_rng(ss.spawn(1)[0])


def checked_out(cfg: CollectConfig, kind: str) -> Path:
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


def first_kept(kept: dict[int, tuple[int, Episode]], n: int, n_attempts: int, console, what: str):
    """The first ``n`` kept attempts in index order: ``(indices, episodes)``; warns when fewer than ``n`` exist."""
    order = sorted(kept)[:n]
    if len(order) < n:
        console.print(
            f"[yellow]warning:[/] only {len(order)} successful {what} in {n_attempts} attempts "
            f"(asked for {n}); writing those"
        )
    return order, [kept[i][1] for i in order]


def attempts_counted(attempts: dict, order: list[int], num_episodes: int) -> list[int]:
    """The attempts a collection's success rate counts: those up to its last kept episode when it kept all
    ``num_episodes`` it asked for (the attempts after it ran only because rounds run in parallel), every attempt
    when it ran out of attempts first."""
    if len(order) < num_episodes:
        return sorted(attempts)
    return sorted(attempts)[: max(order) + 1]
