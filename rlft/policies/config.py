"""Which actor to build and how big: ``PolicyConfig`` (``algo_cfg.policy`` in every training config)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class PolicyConfig:
    """Which actor to build and how big (shared by every algorithm)."""

    kind: str = "gaussian"
    """'gaussian' (tanh-squashed diagonal Gaussian MLP over the flattened chunk), 'flow' (flow matching), 'shortcut'
    (shortcut model, Frans et al. 2024: flow matching + self-consistency, few-step sampling), 'consistency'
    (consistency flow matching: one-step by default) or 'diffusion' (DDPM-trained, DDIM-sampled, Chi et al. 2023).
    The velocity_net/hidden_dims/unet_*/time_embed_dim fields size the network of every kind but 'gaussian'."""
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden layer widths of the MLP (Gaussian actor, or the flow MLP velocity net)."""
    layernorm: bool = True
    """LayerNorm after each hidden layer."""
    log_std_min: float = -5.0
    """Gaussian: lower clamp of the log standard deviation."""
    log_std_max: float = 2.0
    """Gaussian: upper clamp of the log standard deviation."""
    atanh_eps: float = 1e-2
    """Gaussian: data actions are clipped to +-(1 - atanh_eps) before atanh in the log-likelihood. Actions exactly
    at the box edge (OGBench's oracle saturates the gripper and often the position command) otherwise dominate the
    NLL: on 30 noisy cube-single demos, 1e-6 gave BC action MSE 0.18 and 0.40 success, 1e-2 gave 0.09 and 0.50."""
    velocity_net: str = "mlp"
    """Flow: velocity network, 'mlp' or 'unet' (1D temporal U-Net with FiLM conditioning on the observation)."""
    flow_steps: int = 10
    """Flow: Euler integration steps of the sampler (t=0 noise -> t=1 action)."""
    unet_dims: tuple[int, ...] = (64, 128, 256)
    """Flow U-Net: channel widths per level. (64, 128, 256) with time_embed_dim=256 is the seeds' ~5.5M-parameter
    VelocityUNet1D (H=8, A=7); on a CPU it costs ~100 ms per batch-1 chunk, so CPU runs use the MLP velocity net."""
    unet_kernel_size: int = 5
    """Flow U-Net: temporal convolution kernel size."""
    time_embed_dim: int = 64
    """Flow: sinusoidal time-embedding width (shortcut: also the width of the step-size embedding)."""
    shortcut_steps: int = 4
    """Shortcut: sampler steps, each of size 1/shortcut_steps; a power of two <= shortcut_max_steps (1 = one-step
    generation)."""
    shortcut_max_steps: int = 128
    """Shortcut: M, the finest step 1/M (a power of two >= 2); step sizes 1, 1/2, ..., 1/M are trained (the paper's
    128), the finest doubling as the flow velocity d = 0."""
    shortcut_bootstrap_frac: float = 0.25
    """Shortcut: fraction of each batch used for self-consistency targets (the rest get flow-matching targets), in
    [0, 1); the paper uses a quarter."""
    consistency_steps: int = 1
    """Consistency: K, the segments of consistency training and the sampler's steps (1 = one-step generation)."""
    consistency_delta: float = 0.025
    """Consistency: gap between the time t and the target's adjacent time r = min(t + delta, segment end), in
    (0, 1]; 0.025 ~ the 40 discretisation steps of CPQL's consistency training."""
    consistency_coef: float = 1.0
    """Consistency: weight of the consistency term (divided by the squared time gap, so it does not scale with
    delta)."""
    consistency_flow_coef: float = 1.0
    """Consistency: weight of the added flow-matching term (0 = pure consistency training)."""
    diffusion_train_steps: int = 100
    """Diffusion: DDPM noise levels K used in training (Diffusion Policy: 100)."""
    diffusion_inference_steps: int = 10
    """Diffusion: DDIM sampler steps (<= diffusion_train_steps; Diffusion Policy's real-robot setting: 10)."""
    diffusion_beta_schedule: str = "cosine"
    """Diffusion: 'cosine' (squaredcos_cap_v2, Diffusion Policy's) or 'linear' (DDPM's, rescaled to K steps)."""
    diffusion_clip_sample: bool = True
    """Diffusion: clip the DDIM step's predicted clean chunk to [-1, 1] (Diffusion Policy's clip_sample)."""
