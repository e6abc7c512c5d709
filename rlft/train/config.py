"""Typed configs of a training stage (``rlft train``) and of evaluation.

A stage YAML looks like (see ``configs/``)::

    algo: iql            # registered algorithm name (rlft.algos.ALGORITHMS)
    mode: offline        # offline: gradient steps on a dataset; online: env interaction + replay
    steps: 20000         # gradient steps (offline) or environment steps (online)
    dataset: data/cube-single-demos.h5
    env: {env_id: cube-single-singletask-v0, act_horizon: 5}
    algo_cfg: {expectile: 0.9, beta: 3.0}

``algo_cfg`` is typed by the algorithm's own ``Config`` dataclass: ``load_train_config`` reads ``algo`` first, then
builds ``TrainConfig[ThatConfig]`` strictly, so unknown fields are reported with the file and dotted path, and the
command line accepts ``--expectile 0.8`` with help text from the field docstrings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Generic, Literal, Optional, TypeVar

import tyro

from rlft.algos import AlgoConfig, get_algorithm, import_plugins
from rlft.config import from_dict, read_yaml
from rlft.errors import ConfigError

A = TypeVar("A", bound=AlgoConfig)


@dataclasses.dataclass
class EnvConfig:
    """The environment and the action-chunk interface to it."""

    env_id: str = "cube-single-singletask-v0"
    """Environment id (OGBench cube tasks: cube-single-singletask-v0, cube-double-singletask-task2-v0, ...)."""
    act_horizon: int = 5
    """Action chunk length H: the policy outputs H actions, executed open loop as one macro-step."""
    obs_horizon: int = 1
    """Number of stacked past observations the policy sees (1 = current observation only)."""
    gamma: float = 0.99
    """Per-env-step discount; a chunk of k steps is discounted by gamma^k."""
    max_episode_steps: Optional[int] = None
    """Override the env's time limit (None = the env's own, 200 for cube-single)."""
    reward_mode: Optional[Literal["normalized_dense", "dense", "sparse"]] = None
    """ManiSkill only: the reward the training env gives (``normalized_dense``, ``dense`` or ``sparse``, shifted to
    <= 0 as ``rlft.envs.maniskill_env`` describes); None = ``normalized_dense``. Evaluation always reports the default
    reward, so returns stay comparable across runs; success rates do not depend on it."""


@dataclasses.dataclass
class EvalConfig:
    """Periodic evaluation of the deterministic policy."""

    num_episodes: int = 50
    """Episodes per evaluation; 0 = no evaluation at all (no eval metrics, ``policy_best`` = the final policy)."""
    every: int = 0
    """Evaluate every this many gradient steps (offline) or env steps (online); 0 = only at the end."""
    seed: int = 100_000
    """Episode i of an evaluation resets the env with seed ``seed + i`` (fixed across evaluations)."""
    deterministic: bool = True
    """Use the policy's deterministic action (Gaussian mean / flow from zero noise)."""
    num_workers: int = 1
    """Parallel evaluation processes (each runs its own envs and a CPU copy of the policy)."""
    parallel_envs: int = 4
    """Episodes run in lock step per process, so the policy is queried in batches. Each OGBench env holds its MuJoCo
    model (docs/results.md gives the measured memory), so this trades memory for batched inference."""
    video_episodes: int = 0
    """Save the first N episodes of every evaluation as mp4 (+ a PNG of the last frame) in <run>/videos/, named
    step<step>_ep<k>_seed<seed>_<success|fail>.mp4 (offscreen MuJoCo rendering on the CPU)."""
    video_width: int = 320
    """Video frame width in pixels (a multiple of 16 keeps ffmpeg from resizing)."""
    video_height: int = 240
    """Video frame height in pixels."""
    video_frame_skip: int = 2
    """Render every k-th env step (OGBench steps at 20 Hz: k=2 gives 10 fps in real time)."""

    def __post_init__(self) -> None:
        if self.num_episodes < 0:
            raise ConfigError(f"eval.num_episodes must be >= 0, got {self.num_episodes}")
        if self.video_episodes < 0:
            raise ConfigError(f"eval.video_episodes must be >= 0, got {self.video_episodes}")
        if self.video_width < 16 or self.video_height < 16:
            raise ConfigError(
                f"eval.video_width/video_height must be >= 16, got {self.video_width}x{self.video_height}"
            )
        if self.video_frame_skip < 1:
            raise ConfigError(f"eval.video_frame_skip must be >= 1, got {self.video_frame_skip}")
        if self.every < 0:
            raise ConfigError(f"eval.every must be >= 0 (0 = only at the end), got {self.every}")
        if self.num_workers < 1 or self.parallel_envs < 1:
            raise ConfigError(
                f"eval.num_workers and eval.parallel_envs must be >= 1, got {self.num_workers} and {self.parallel_envs}"
            )

    def video_spec(self):
        """The evaluation's ``VideoSpec`` (None when no video is asked for)."""
        from rlft.video import VideoSpec

        if self.video_episodes <= 0:
            return None
        return VideoSpec(
            self.video_episodes,
            self.video_width,
            self.video_height,
            self.video_frame_skip,
            fps=20.0 / self.video_frame_skip,
        )


@dataclasses.dataclass
class RunConfig:
    """Where outputs go, seeding, threads, logging and checkpoints."""

    out_dir: str = "runs"
    """Parent directory of run directories."""
    name: Optional[str] = None
    """Run directory name (default: <algo>-<env>-s<seed>-<timestamp>)."""
    seed: int = 0
    """Seed of torch/numpy/env resets for training."""
    threads: int = 1
    """torch intra-op threads (1 is fastest for small nets on a shared 2-core CPU; docs/notebook/benchmarks.md §3)."""
    flush_denormal: bool = True
    """Flush denormal floats (magnitudes below ~1.2e-38 in float32) to zero in CPU math (``torch.set_flush_denormal``,
    process-wide). On x86 CPUs a denormal operand makes a matrix product up to ~100x slower; they appear where a
    softmax or logsumexp spans a wide range (e.g. CQL's penalty once its gap grows). False keeps IEEE gradual
    underflow."""
    device: str = "cpu"
    """'cpu', 'cuda' or 'auto'."""
    log_every: int = 1000
    """Log averaged training metrics every this many gradient steps."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0 = only at the end)."""
    resume: bool = False
    """Continue the run in ``out_dir/name`` from its latest checkpoint."""
    track: bool = False
    """Also log to Weights & Biases (needs the 'wandb' extra)."""
    wandb_project: str = "rlft"
    """W&B project name when ``track`` is set."""
    wandb_group: Optional[str] = None
    """W&B group of the run when ``track`` is set (``rlft sweep`` sets it to the sweep's name: one W&B run per
    trial, grouped by sweep; ``rlft pipeline`` to the pipeline's run directory name)."""
    tensorboard: bool = True
    """Write TensorBoard event files to <run>/tb."""
    stop_on_divergence: bool = False
    """Stop the run with an error as soon as the live checks find it diverged -- a non-finite metric, a Q value
    outside the range the rewards and gamma allow, or a loss three orders of magnitude above its start
    (``rlft.report.diagnose.DIVERGENCE_RULES``) -- keeping the last checkpoint written before. False: warn and go on.
    (A checkpoint is never written from non-finite weights either way.)"""

    def __post_init__(self) -> None:
        from rlft.config import check_dir_name

        check_dir_name(self.name, "run.name")
        for field, low in (("threads", 1), ("log_every", 0), ("checkpoint_every", 0)):
            v = getattr(self, field)
            if v < low:
                raise ConfigError(f"run.{field} must be >= {low}, got {v}")


@dataclasses.dataclass
class TrainConfig(Generic[A]):
    """One training stage: an algorithm, offline on a dataset or online in the environment."""

    algo_cfg: Annotated[A, tyro.conf.arg(name="")]
    """The algorithm's own hyper-parameters: its registered ``Config`` (``rlft train iql --beta 3``; in YAML the
    ``algo_cfg`` mapping)."""
    algo: tyro.conf.Suppress[str] = "bc"
    """Registered algorithm name (bc, iql, sac, ...): in YAML it picks the type of ``algo_cfg``; on the command line it
    is the subcommand. Always the name ``algo_cfg``'s type is registered under."""
    plugins: list[str] = dataclasses.field(default_factory=list)
    """Algorithm files from outside rlft to import first (``.py`` paths, relative to this YAML's folder or the
    working directory, or module names); each registers its algorithm with ``@register`` so ``algo`` can name it
    (docs/add-an-algorithm.md)."""
    mode: Literal["offline", "online"] = "offline"
    """offline: ``steps`` gradient steps on ``dataset``; online: ``steps`` env steps with a replay buffer."""
    steps: int = 10_000
    """Gradient steps (offline) or environment steps (online)."""
    dataset: Optional[str] = None
    """Dataset file (.h5 in ManiSkill's layout, or OGBench .npz); needed offline and for offline_ratio > 0 online."""
    clip_dataset_actions: bool = False
    """A dataset whose actions lie outside the env's action box (beyond 0.1% of its width) is refused, naming the file,
    the measured range and the box (the data are in other units: rescale them); true clips them into the box instead
    (``rlft.envs.datasets.load_dataset_for_env``)."""
    data_weighting: Literal["none", "plan_confidence"] = "none"
    """Weigh the dataset's rows in algorithms that take row weights (BC): 'plan_confidence' uses an MPC expert's
    confidence at each step, ``exp(-cost_spread_t / (data_weighting_temperature * median spread))`` scaled to mean 1
    (data from ``rlft collect --mode mpc``); a dataset's own ``signals/row_weight`` is used as it is."""
    data_weighting_temperature: float = 1.0
    """'plan_confidence': larger values flatten the weights (towards plain BC)."""
    chunk_targets: Literal["executed", "planned"] = "executed"
    """BC's target for the chunk at step t: the actions executed at t .. t+H-1, or 'planned': the plan an MPC expert
    made at t (``signals/planned_actions[t, :H]``, data from ``rlft collect --mode mpc`` with a horizon >= H), one
    consistent open-loop chunk as the policy will execute it."""
    init_policy: Optional[str] = None
    """Start from this saved policy (.safetensors), e.g. the previous stage's; None = a fresh policy."""
    init_critic: Optional[str] = None
    """Warm-start the algorithm's critics/value nets from a previous stage's training state (``checkpoints/state.pt``);
    networks are matched by name and shape (see ``Algorithm.load_pretrained``)."""
    base_policy: Optional[str] = None
    """A frozen policy (.safetensors, e.g. a flow BC policy) to steer through its start noise (DSRL): when set, the
    env's action is that policy's latent noise chunk, decoded by it and executed as one macro-step
    (``rlft.envs.noise_action``); the algorithm's actor acts in that noise space and the saved policy is the composite
    ``SteeredFlowPolicy``. An ``init_policy`` that is already a steered policy brings its own base policy."""
    base_mode: Literal["noise", "residual"] = "noise"
    """How the trained actor uses ``base_policy``: 'noise' (DSRL) chooses its latent start noise, one chunk per
    macro-step; 'residual' (ResiP, Ankile et al., 2024) executes the base policy's chunks and adds a per-step
    correction ``bound * delta`` (delta in [-1, 1]^A) seen from ``concat(o_t, a^base_t)`` (``rlft.envs.residual``);
    offline rows are relabelled with ``delta = clip((a - a^base) / bound, -1, 1)``, and the saved policy is the
    composite ``ResidualPolicy``."""
    residual_scale: float = 0.5
    """With base_mode 'residual': the largest correction per action dimension, in units of ``residual_unit``."""
    residual_dim_scale: tuple[float, ...] = ()
    """With base_mode 'residual': one multiplier in [0, 1] per action dimension on top of ``residual_scale``, to
    size groups of dimensions differently (e.g. ``[0.2, 0.2, 0.2, 1, 1, 1, 1]`` for smaller position than rotation
    and gripper corrections under an end-effector delta-pose controller; a 0 leaves that dimension, e.g. the
    gripper, exactly the base policy's). Empty = the same scale on every dimension."""
    residual_unit: Literal["action_std", "half_range"] = "action_std"
    """With base_mode 'residual': 'action_std' sizes the correction by the dataset's per-dimension action standard
    deviation (commensurate with the actions the task uses), 'half_range' by the action box's half-range."""
    residual_ramp_steps: int = 0
    """With base_mode 'residual': progressive exploration (Policy Decorator, Yuan et al., 2024). Before this many env
    steps, each exploration step uses the residual with probability ``env_step / residual_ramp_steps`` and otherwise
    runs the base action alone (stored as delta = 0), so early data stays close to the base policy's. 0 = the
    residual acts on every step from the start."""
    action_magnitude: float = 1.5
    """With a base policy: the latent noise action is bounded to [-action_magnitude, action_magnitude] (DSRL: 1.5)."""
    replay_capacity: int = 200_000
    """Online: replay buffer capacity in macro-steps."""
    n_step: int = 1
    """Online: TD targets over up to this many consecutive macro-steps of an episode from the replay (n-step returns;
    ``rlft.data.replay``), uncorrected for the later steps' actions: faster value propagation at some off-policy
    bias. 1 = one macro-step. Offline rows mixed into a batch keep one-macro-step targets."""
    num_envs: int = 1
    """Online: envs stepped in parallel, each in its own process (gymnasium ``AsyncVectorEnv``; state observations).
    Every collected macro-step counts toward ``steps`` and gets ``utd_ratio`` updates, as with one env."""
    policy_ema: float = 0.0
    """Decay of an exponential moving average of the policy's weights, updated after every update; when > 0 the EMA
    is what the stage evaluates and saves (``rlft.train.ema``), the algorithm keeps training and exploring with its
    own weights. 0 = off (the trained weights are saved). Flow/diffusion policies commonly use 0.999."""
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    """Environment and chunking."""
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """Evaluation schedule."""
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    """Outputs, seeding and logging."""

    def _check_ramp(self) -> None:
        r = self.residual_ramp_steps
        _check_int("residual_ramp_steps", r, 0, " env steps")
        if r > 0 and (self.base_mode != "residual" or getattr(self.algo_cfg, "rollout_steps", 0) > 0):
            raise ConfigError(
                "residual_ramp_steps: progressive exploration needs base_mode: residual and an off-policy algorithm "
                f"(got base_mode {self.base_mode!r}, algo {self.algo!r})"
            )

    def __post_init__(self) -> None:
        self.algo = getattr(type(self.algo_cfg), "algo_name", self.algo)
        _check_int("steps", self.steps, 1, " (gradient steps offline, env steps online)")
        if self.replay_capacity < 1:
            raise ConfigError(f"replay_capacity must be >= 1, got {self.replay_capacity}")
        self._check_ramp()
        _check_int("n_step", self.n_step, 1, " macro-steps")
        if self.n_step > 1 and getattr(self.algo_cfg, "rollout_steps", 0) > 0:
            raise ConfigError(
                f"n_step: {self.algo} learns from on-policy rollouts (algo_cfg.rollout_steps > 0), not from replay "
                "samples; n_step applies to off-policy algorithms only, use n_step: 1"
            )
        _check_int("num_envs", self.num_envs, 1)
        if self.num_envs > 1 and getattr(self.algo_cfg, "rollout_steps", 0) > 0:
            raise ConfigError(
                f"num_envs: {self.algo} collects on-policy rollouts (algo_cfg.rollout_steps > 0), whose advantages "
                "are computed along one env's steps; use num_envs: 1"
            )
        if not 0.0 <= self.policy_ema < 1.0:
            raise ConfigError(f"policy_ema must be in [0, 1) (0 = off), got {self.policy_ema}")
        if not self.action_magnitude > 0:
            raise ConfigError(f"action_magnitude must be > 0, got {self.action_magnitude}")


def _check_int(name: str, value, minimum: int, unit: str = "") -> None:
    """One ConfigError naming ``name`` unless ``value`` is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}{unit}, got {value!r}")


def train_config_type(algo: str) -> type:
    """``TrainConfig`` specialised to the algorithm's Config type (for strict YAML loading and tyro)."""
    return TrainConfig[get_algorithm(algo).Config]  # type: ignore[index]


def train_config_from_dict(data: dict, where: str) -> TrainConfig:
    """Strictly build a TrainConfig: ``algo`` picks the type of ``algo_cfg`` (errors name ``where`` and the field)."""
    data = dict(data)
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{where}.plugins: expected a list of .py paths or module names, got {plugins!r}")
    folder = str(Path(where).parent) if Path(where).suffix in (".yaml", ".yml") else None
    data["plugins"] = import_plugins(plugins, folder)
    algo = data.get("algo", "bc")
    if not isinstance(algo, str):
        raise ConfigError(f"{where}.algo: expected an algorithm name, got {algo!r}")
    try:
        cls = get_algorithm(algo)
    except ConfigError as e:
        raise ConfigError(f"{where}.algo: {e}") from None
    data["algo_cfg"] = data.get("algo_cfg") or {}
    return from_dict(TrainConfig[cls.Config], data, where)


def load_train_config(path: str | Path) -> TrainConfig:
    return train_config_from_dict(read_yaml(path), str(path))
