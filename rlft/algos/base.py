"""What every algorithm is: a Config dataclass, an ``update(batch) -> dict`` and a state_dict.

An algorithm owns its critics, target networks, temperature and optimisers, and exposes its deployable ``policy``.
The runner never branches on an algorithm's name: everything that differs between algorithms and matters to the
runner is a field of ``AlgoConfig`` (batch size, UTD ratio, warm-up, offline fraction) or a method here.

Metric names: ``critic/...``, ``actor/...``, ``alpha/...``, with shared names where they apply (q_mean, q_std,
td_error, td_target_mean, value_loss, v_mean, temperature, entropy, target_entropy, bc_loss, actor_q, actor_lam,
iql_weights_mean/max, iql_advantage_mean, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterator, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from rlft.data.batch import ChunkBatch
from rlft.policies.base import Policy
from rlft.policies.config import PolicyConfig


def optimizer_step(
    loss: torch.Tensor,
    optim: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    inputs: list[torch.Tensor] | None = None,
    max_grad_norm: float | None = None,
) -> torch.Tensor | None:
    """One gradient step on ``loss``: zero the gradients, backpropagate, optionally clip, step.

    ``optim``: one optimiser, or several whose parameters ``loss`` reaches (one backward, then each steps);
    ``inputs``: backpropagate into these tensors only (e.g. an actor loss that must not reach the critics);
    ``max_grad_norm``: clip the global L2 norm of the gradients of ``inputs`` (default: the optimisers' parameters,
    in their order) to this and return the norm before clipping; None = no clipping, returns None.
    """
    optims = [optim] if isinstance(optim, torch.optim.Optimizer) else list(optim)
    for opt in optims:
        opt.zero_grad(set_to_none=True)
    loss.backward(inputs=inputs)
    norm = None
    if max_grad_norm is not None:
        params = inputs if inputs is not None else [p for o in optims for g in o.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    for opt in optims:
        opt.step()
    return norm


@runtime_checkable
class Stateful(Protocol):
    """Anything an algorithm holds that saves and restores itself (besides modules and optimisers), e.g. a
    ``Temperature``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, sd: dict[str, Any]) -> None: ...


@dataclasses.dataclass
class AlgoConfig:
    """Fields the runner reads; every algorithm's Config subclasses this and documents its own fields."""

    batch_size: int = 256
    """Minibatch size per gradient update."""
    utd_ratio: int = 1
    """Online: gradient updates per environment (macro-)step."""
    warmup_steps: int = 0
    """Online: environment steps collected (with the current policy's exploration) before updates start."""
    offline_ratio: float = 0.0
    """Online: fraction of each batch drawn from the offline dataset (RLPD uses 0.5); 0 = online data only."""
    rollout_steps: int = 0
    """Online, on-policy algorithms (PPO): > 0 makes the loop collect this many macro-steps with the current policy,
    call ``update`` once with all of them in collection order and discard them (utd_ratio/batch_size/warmup unused);
    0 = off-policy (replay sampling)."""
    explore_noise_scale: float = 1.0
    """Online exploration: the policy's sampling noise (Gaussian eps, or a flow policy's initial noise) is scaled by
    this; 1 samples the policy as is, 0 acts deterministically (Gaussian mean / flow from zero noise)."""
    freeze_encoder: bool = False
    """Camera observations: keep the policy's image encoder frozen in this stage (its features detached from every
    loss), whatever the algorithm's own rule (``Algorithm.encoder_training``: BC trains it end to end, IQL/SAC
    through the critic, DrQ). For stages that start from a policy whose encoder an earlier stage trained."""
    policy: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)
    """The actor to build when no pretrained policy is given."""

    def data_horizon(self, act_horizon: int) -> int:
        """Action steps per training chunk (``ChunkBatch.action`` is [B, data_horizon, A]); the runner builds its
        offline ``ChunkDataset`` with this. Default: the policy's ``act_horizon``. An algorithm whose critic backs up
        over longer chunks than the policy executes (DQC) returns more and slices the policy's first
        ``act_horizon`` steps itself. Online replay holds executed chunks of ``act_horizon`` steps only, so the
        runner refuses online mode when this differs from ``act_horizon``."""
        return act_horizon

    #: the registered algorithm's name, prefixed to this config's error messages (``register`` sets it)
    algo_name: ClassVar[str] = "algo"

    def __post_init__(self) -> None:
        """Refuse numbers no run can use and choices outside a ``Literal`` field's, naming the algorithm and the field
        (subclasses call this first)."""
        from rlft.config import check_choices
        from rlft.errors import ConfigError

        name = self.algo_name
        check_choices(self, name)
        for field, low in (("batch_size", 1), ("utd_ratio", 1), ("warmup_steps", 0), ("rollout_steps", 0)):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{name}.{field} must be an integer >= {low}, got {v!r}")
        if not 0.0 <= self.offline_ratio <= 1.0:
            raise ConfigError(f"{name}.offline_ratio must be in [0, 1], got {self.offline_ratio}")
        if not self.explore_noise_scale >= 0.0:
            raise ConfigError(f"{name}.explore_noise_scale must be >= 0, got {self.explore_noise_scale}")


@dataclasses.dataclass
class CriticConfig(AlgoConfig):
    """``AlgoConfig`` plus the Q-ensemble fields shared by every actor-critic algorithm (each algorithm's docstring
    says how it combines the members: minimum, random-subset minimum, one random member, ...)."""

    num_critics: int = 2
    """Number of Q networks in the ensemble."""
    critic_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of each Q network (and of the V network, where the algorithm has one)."""
    critic_layernorm: bool = True
    """LayerNorm after each hidden layer of the Q (and V) networks."""
    critic_impl: Literal["auto", "loop", "batched"] = "auto"
    """Critic ensemble implementation: 'loop', 'batched' or 'auto' (batched on CUDA, loop on CPU)."""
    critic_lr: float = 3e-4
    """Adam learning rate of the Q networks."""
    tau: float = 0.005
    """Polyak rate of the target networks, target <- (1 - tau) target + tau Q (when: the algorithm's docstring)."""

    def __post_init__(self) -> None:
        from rlft.errors import ConfigError

        super().__post_init__()
        name = self.algo_name
        if self.num_critics < 1:
            raise ConfigError(f"{name}.num_critics must be >= 1, got {self.num_critics}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"{name}.tau must be in (0, 1], got {self.tau}")


class Algorithm:
    """Base class. Subclasses set ``Config`` and ``name`` and implement ``update``.

    Construction: ``Algo(cfg, obs_dim, action_dim, act_horizon, policy=None, device='cpu')`` -- ``policy`` is a
    pretrained policy to start from (from an earlier stage); otherwise one is built from ``cfg.policy``. A policy
    class marked ``needs_own_trainer`` (FQL's one-step policy, QC/DQC's best-of-N policy: parts only their algorithm
    knows how to train) is continued only by an algorithm that lists it in ``continues``; any other refuses it here
    with ``ConfigError``. Policies name no algorithm.
    """

    Config: ClassVar[type[AlgoConfig]] = AlgoConfig
    name: ClassVar[str] = "base"
    #: policy kinds (PolicyConfig.kind) the algorithm can train; the contract test runs each
    supported_policies: ClassVar[tuple[str, ...]] = ("gaussian", "flow")
    #: the update only imitates the data's action chunks (no rewards, no TD targets): the data's rows may then be
    #: weighted (``ChunkBatch.weight``, ``data_weighting``) and its targets be an expert's plans (``chunk_targets``)
    imitation_only: ClassVar[bool] = False
    #: composite policy classes (``Policy.needs_own_trainer``) this algorithm continues from an earlier stage
    continues: ClassVar[tuple[type[Policy], ...]] = ()
    #: the algorithm steers a frozen base policy (DSRL variants): it is built with ``base_policy=`` (the runner passes
    #: ``TrainConfig.base_policy``) and its ``policy`` acts in the base policy's noise space
    uses_base_policy: ClassVar[bool] = False
    #: who trains the policy's image encoder (camera observations; ``featurize``): 'end_to_end' (this algorithm's
    #: policy loss, e.g. BC), 'critic' (DrQ, Yarats et al. 2021: the critic's TD loss trains it, its optimiser holds
    #: ``encoder_parameters()``, and the actor and value losses see the features detached) or 'frozen' (features
    #: detached: the encoder of the stage it starts from)
    encoder_training: ClassVar[str] = "frozen"
    #: random-shift augmentation of the frames in ``featurize`` (rlft.nets.encoders.random_shift)
    training_augment: ClassVar[bool] = True
    #: the algorithm takes a policy with an image encoder (camera observations); False: it builds composite actors
    #: (best-of-N, one-step) that do not carry one yet, and refuses such a policy
    supports_images: ClassVar[bool] = True
    #: the algorithm cannot start without pretrained critics (``TrainConfig.init_critic``), e.g. a frozen scoring critic
    needs_pretrained_critic: ClassVar[bool] = False

    def __init__(
        self,
        cfg: AlgoConfig,
        obs_dim: int,
        action_dim: int,
        act_horizon: int,
        policy: Policy | None = None,
        device: str | torch.device = "cpu",
    ):
        from rlft.errors import ConfigError
        from rlft.policies import build_policy, policy_kind

        self.cfg = cfg
        self.obs_dim, self.action_dim, self.act_horizon = obs_dim, action_dim, act_horizon
        self.device = torch.device(device)
        if policy is not None and getattr(policy, "encoder", None) is not None and not self.supports_images:
            raise ConfigError(
                f"{self.name}: camera observations are not supported yet (its best-of-N / one-step actor does not "
                "carry an image encoder); use a state-observation env"
            )
        if policy is not None and type(policy).needs_own_trainer and not isinstance(policy, self.continues):
            from rlft.algos import ALGORITHMS

            owners = "/".join(n for n, c in ALGORITHMS.items() if isinstance(policy, c.continues)) or "none"
            raise ConfigError(
                f"{self.name}: cannot start from a {type(policy).__name__} (the deployable artifact of {owners}); "
                f"continue with {owners}, or start {self.name} from a plain policy"
            )
        kind = cfg.policy.kind if policy is None else policy_kind(policy)  # None: a class without a kind
        if kind is not None and kind not in self.supported_policies:
            raise ConfigError(
                f"{self.name}: policy kind {kind!r} is not supported; supported: {', '.join(self.supported_policies)}"
            )
        self.policy: Policy = (
            policy if policy is not None else build_policy(cfg.policy, obs_dim, action_dim, act_horizon)
        ).to(self.device)
        self.num_updates = 0
        self.env_step: int | None = None  # env steps collected at the latest online_batches call; None offline

    def update(self, batch: ChunkBatch) -> dict[str, float]:
        raise NotImplementedError

    def critic_ensemble(self, action_in_dim: int) -> torch.nn.Module:
        """A Q ensemble over (obs, a flat ``action_in_dim``-vector) built from the config's critic fields, on the
        algorithm's device."""
        from rlft.nets.ensemble import CriticEnsemble

        cfg = self.cfg
        return CriticEnsemble(
            self.obs_dim,
            action_in_dim,
            cfg.num_critics,
            tuple(cfg.critic_hidden_dims),
            cfg.critic_layernorm,
            cfg.critic_impl,
        ).to(self.device)

    def value_net(self) -> torch.nn.Module:
        """A state-value network V(s) with the critics' hidden widths and LayerNorm setting, on the device."""
        from rlft.nets.ensemble import ValueNet

        return ValueNet(self.obs_dim, tuple(self.cfg.critic_hidden_dims), self.cfg.critic_layernorm).to(self.device)

    def online_batches(self, replay, sample: Callable[[], ChunkBatch], env_step: int) -> Iterator[ChunkBatch]:
        """Online: the batches to update on after one env macro-step, in order (the runner updates on each as it
        comes). Off-policy (this default): ``utd_ratio`` batches from ``sample()`` (replay, mixed with the offline
        data by ``offline_ratio``) once ``warmup_steps`` env steps are collected. On-policy
        (``rollout_steps > 0``, e.g. PPO): one batch of the whole rollout in collection order once it holds
        ``rollout_steps`` macro-steps, which are then discarded."""
        cfg = self.cfg
        self.env_step = int(env_step)
        if cfg.rollout_steps > 0:
            if len(replay) >= cfg.rollout_steps:
                yield replay.ordered()
                replay.clear()
        elif env_step >= cfg.warmup_steps and len(replay) > 0:
            for _ in range(cfg.utd_ratio):
                yield sample()

    def actor_frozen(self, actor_warmup_steps: int) -> bool:
        """True while an online run is in its critic-only warm-up: fewer than ``warmup_steps + actor_warmup_steps``
        env steps collected (updates start at ``warmup_steps``). Counted in env steps, so the warm-up lasts as long
        whatever ``utd_ratio``; offline training (``env_step`` None) has none."""
        return self.env_step is not None and self.env_step < self.cfg.warmup_steps + actor_warmup_steps

    @property
    def encoder_rule(self) -> str:
        """Who trains the image encoder in this run: 'frozen' when ``cfg.freeze_encoder`` is set, else the
        algorithm's ``encoder_training``."""
        return "frozen" if self.cfg.freeze_encoder else self.encoder_training

    def encoder_parameters(self) -> list[torch.nn.Parameter]:
        """The policy's image-encoder parameters when this algorithm's critic trains it (``encoder_training``
        'critic': they join the critic optimiser); none otherwise, or without an encoder."""
        encoder = getattr(self.policy, "encoder", None)
        return list(encoder.parameters()) if encoder is not None and self.encoder_rule == "critic" else []

    def featurize(self, batch: ChunkBatch) -> ChunkBatch:
        """A batch with camera images as the networks see it: ``obs``/``next_obs`` become ``concat(state, features)``
        of the policy's image encoder (frames randomly shifted, DrQ). ``encoder_training`` says who trains the encoder:
        'end_to_end' lets this algorithm's loss on ``obs`` reach it (BC); 'frozen' detaches the features (an encoder
        trained by an earlier stage); 'critic' keeps the gradient for the critic's loss (DrQ; the algorithm detaches
        ``obs`` for its actor and value losses). ``next_obs`` features never carry gradients (they only enter targets). A batch
        without images, or a policy without an encoder, passes through unchanged."""
        encoder = getattr(self.policy, "encoder", None)
        if batch.images is None or encoder is None:
            return batch
        with torch.set_grad_enabled(self.encoder_rule != "frozen" and torch.is_grad_enabled()):
            f = encoder(batch.images, augment=self.training_augment)
        with torch.no_grad():
            nf = encoder(batch.next_images, augment=self.training_augment)
        return dataclasses.replace(
            batch,
            obs=torch.cat([batch.obs, f], -1),
            next_obs=torch.cat([batch.next_obs, nf], -1),
            images=None,
            next_images=None,
        )

    @torch.no_grad()
    def explore(self, obs_raw: Any) -> torch.Tensor:
        """Online data collection: the raw env action chunk(s) to execute, sampled with the policy's noise scaled by
        ``cfg.explore_noise_scale``."""
        scale = self.cfg.explore_noise_scale
        if scale == 1.0:
            return self.policy.act(obs_raw, deterministic=False)
        state = getattr(obs_raw, "state", obs_raw)  # an Obs with cameras: its state part sets the batch
        batch = () if np.ndim(state) == 1 else (len(state),)
        noise = torch.randn(*batch, *self.policy.chunk_shape, device=self.device) * scale
        return self.policy.act(obs_raw, noise=noise, deterministic=False)

    # ---- persistence: every nn.Module / optimizer / Stateful attribute plus counters ----
    def _modules_and_optims(self) -> dict[str, Any]:
        out = {}
        for k, v in vars(self).items():
            if isinstance(v, (torch.nn.Module, torch.optim.Optimizer, Stateful)) and k != "cfg":
                out[k] = v
            elif isinstance(v, torch.Tensor) and v.requires_grad:
                out[k] = v
        return out

    def state_dict(self) -> dict[str, Any]:
        sd: dict[str, Any] = {"num_updates": self.num_updates}
        for k, v in self._modules_and_optims().items():
            sd[k] = v.detach().clone() if isinstance(v, torch.Tensor) else v.state_dict()
        return sd

    def load_pretrained(self, sd: dict[str, Any]) -> list[str]:
        """Warm-start networks from another algorithm's ``state_dict`` (e.g. the offline stage's critics).

        Every ``nn.Module`` attribute other than the policy whose name is also in ``sd`` is loaded when the shapes
        match; critic ensembles of a different size are filled by cycling the pretrained members
        (``CriticEnsemble.load_cycled``). Optimiser states are not carried over. Returns the loaded names.
        """
        from rlft.nets.ensemble import CriticEnsemble

        loaded = []
        for k, v in vars(self).items():
            if k == "policy" or not isinstance(v, torch.nn.Module) or k not in sd:
                continue
            try:
                v.load_state_dict(sd[k])
            except RuntimeError:
                if not (isinstance(v, CriticEnsemble) and v.load_cycled(sd[k])):
                    continue
            loaded.append(k)
        return loaded

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.num_updates = int(sd["num_updates"])
        for k, v in self._modules_and_optims().items():
            if isinstance(v, torch.Tensor):
                with torch.no_grad():
                    v.copy_(sd[k])
            else:
                v.load_state_dict(sd[k])
