"""Which actor to build and how big: ``PolicyConfig`` (``algo_cfg.policy`` in every training config), with the
options of one kind in that kind's own config (``policy.shortcut.steps``, ``policy.diffusion.beta_schedule``, ...)."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass
class GaussianOptions:
    """Options of the 'gaussian' kind (tanh-squashed diagonal Gaussian over the flattened chunk)."""

    log_std_min: float = -5.0
    """Lower clamp of the log standard deviation."""
    log_std_max: float = 2.0
    """Upper clamp of the log standard deviation."""
    atanh_eps: float = 1e-2
    """Data actions are clipped to +-(1 - atanh_eps) before atanh in the log-likelihood, so that actions exactly at
    the box edge (OGBench's oracle saturates the gripper and often the position command) do not dominate the NLL
    (measurements: docs/results.md)."""


@dataclasses.dataclass
class ShortcutOptions:
    """Options of the 'shortcut' kind (Frans et al. 2024: flow matching + self-consistency, few-step sampling)."""

    steps: int = 4
    """Sampler steps, each of size 1/steps; a power of two <= max_steps (1 = one-step generation)."""
    max_steps: int = 128
    """M, the finest step 1/M (a power of two >= 2); step sizes 1, 1/2, ..., 1/M are trained (the paper's 128), the
    finest doubling as the flow velocity d = 0."""
    bootstrap_frac: float = 0.25
    """Fraction of each batch used for self-consistency targets (the rest get flow-matching targets), in [0, 1); the
    paper uses a quarter."""


@dataclasses.dataclass
class ConsistencyOptions:
    """Options of the 'consistency' kind (consistency flow matching: one-step by default)."""

    steps: int = 1
    """K, the segments of consistency training and the sampler's steps (1 = one-step generation)."""
    delta: float = 0.025
    """Gap between the time t and the target's adjacent time r = min(t + delta, segment end), in (0, 1]; 0.025 ~ the
    40 discretisation steps of CPQL's consistency training."""
    coef: float = 1.0
    """Weight of the consistency term (divided by the squared time gap, so it does not scale with delta)."""
    flow_coef: float = 1.0
    """Weight of the added flow-matching term (0 = pure consistency training)."""


@dataclasses.dataclass
class DiffusionOptions:
    """Options of the 'diffusion' kind (DDPM-trained, DDIM-sampled, Chi et al. 2023)."""

    train_steps: int = 100
    """DDPM noise levels K used in training (Diffusion Policy: 100)."""
    inference_steps: int = 10
    """DDIM sampler steps (<= train_steps; Diffusion Policy's real-robot setting: 10)."""
    beta_schedule: Literal["cosine", "linear"] = "cosine"
    """'cosine' (squaredcos_cap_v2, Diffusion Policy's) or 'linear' (DDPM's, rescaled to K steps)."""
    clip_sample: bool = True
    """Clip the DDIM step's predicted clean chunk to [-1, 1] (Diffusion Policy's clip_sample)."""


@dataclasses.dataclass
class EncoderOptions:
    """The image encoder of a policy that sees cameras (used only when the env has them; rlft.nets.encoders)."""

    kind: Literal["conv", "resnet18"] = "conv"
    """'conv' (DrQ-v2's four-layer conv net; fast enough for a CPU) or 'resnet18' (GroupNorm + spatial softmax,
    Diffusion Policy's; a GPU's)."""
    feature_dim: int = 64
    """Features per camera, concatenated with the state for the policy's (and critics') networks."""
    shift_pad: int = 4
    """Random-shift augmentation in training: pad by this many pixels and crop back at a random offset; 0 = off."""


@dataclasses.dataclass
class PolicyConfig:
    """Which actor to build and how big (shared by every algorithm)."""

    kind: Literal["gaussian", "flow", "shortcut", "consistency", "diffusion"] = "gaussian"
    """'gaussian' (tanh-squashed diagonal Gaussian MLP over the flattened chunk), 'flow' (flow matching), 'shortcut'
    (shortcut model, Frans et al. 2024: flow matching + self-consistency, few-step sampling), 'consistency'
    (consistency flow matching: one-step by default) or 'diffusion' (DDPM-trained, DDIM-sampled, Chi et al. 2023).
    The velocity_net/hidden_dims/unet_*/time_embed_dim fields size the network of every kind but 'gaussian'."""
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden layer widths of the MLP (Gaussian actor, or the flow MLP velocity net)."""
    layernorm: bool = True
    """LayerNorm after each hidden layer."""
    velocity_net: Literal["mlp", "unet"] = "mlp"
    """Generative kinds: velocity network, 'mlp' or 'unet' (1D temporal U-Net with FiLM conditioning on the
    observation)."""
    flow_steps: int = 10
    """Flow: Euler integration steps of the sampler (t=0 noise -> t=1 action)."""
    unet_dims: tuple[int, ...] = (64, 128, 256)
    """U-Net velocity net: channel widths per level ((64, 128, 256) with time_embed_dim=256 is a ~5.5M-parameter net
    for H=8, A=7, slow on a CPU, where the MLP velocity net is the usual choice)."""
    unet_kernel_size: int = 5
    """U-Net velocity net: temporal convolution kernel size."""
    time_embed_dim: int = 64
    """Generative kinds: sinusoidal time-embedding width (shortcut: also the width of the step-size embedding)."""
    gaussian: GaussianOptions = dataclasses.field(default_factory=GaussianOptions)
    """Options of kind 'gaussian'."""
    shortcut: ShortcutOptions = dataclasses.field(default_factory=ShortcutOptions)
    """Options of kind 'shortcut'."""
    consistency: ConsistencyOptions = dataclasses.field(default_factory=ConsistencyOptions)
    """Options of kind 'consistency'."""
    diffusion: DiffusionOptions = dataclasses.field(default_factory=DiffusionOptions)
    """Options of kind 'diffusion'."""
    encoder: EncoderOptions = dataclasses.field(default_factory=EncoderOptions)
    """Image encoder, when the env has cameras."""

    def __post_init__(self) -> None:
        from rlft.config import check_choices

        for obj, prefix in ((self, "policy"), (self.diffusion, "policy.diffusion"), (self.encoder, "policy.encoder")):
            check_choices(obj, prefix)
