"""A 1D temporal U-Net with FiLM conditioning (Diffusion-Policy style) for velocity/noise prediction over chunks.

Input: a (noisy) action chunk ``x`` [B, H, A], a flow/diffusion time ``t`` [B] and a condition vector ``cond`` [B, C]
(the normalised observation). The chunk is treated as a 1D signal over the H time steps with A channels.

Architecture (levels ``dims = (d0, d1, ..., d_{n-1})``):

* condition ``c = [time_mlp(t), cond]`` with ``time_mlp`` = sinusoidal embedding -> Linear -> Mish -> Linear;
* every residual block is ``Conv1d-GroupNorm-Mish`` twice, with FiLM between the two convolutions:
  ``h = (1 + scale(c)) * h + bias(c)`` (the ``1 +`` makes a freshly initialised block close to an unconditioned one;
  Diffusion Policy uses ``scale * h + bias``), plus a 1x1-conv residual when the channel count changes;
* encoder: level i = two residual blocks to ``d_i`` channels, then a stride-2 convolution (except at the last
  level); the output of each level *before* down-sampling is kept as a skip connection;
* middle: two residual blocks at ``d_{n-1}``;
* decoder: for i = n-2 .. 0: transposed-conv up-sampling (x2), concatenation with the skip of level i, two residual
  blocks to ``d_i`` channels; then ``Conv1dBlock`` + a 1x1 convolution back to A channels.

Unlike Diffusion Policy's ``ConditionalUnet1D`` every skip connection is used exactly once (DP leaves its
full-resolution skip unused and concatenates the bottleneck with itself).

Short / odd horizons: the n-1 down-samplings need a length divisible by ``2**(n-1)``; the chunk is zero-padded on
the right to the next multiple (H=5 with 3 levels -> 8, H=1 -> 4) and the output is cropped back to H. Padding is
applied to the network input only: it does not change which time steps a loss sees.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class SinusoidalTimeEmbedding(nn.Module):
    """t [B] (flow time in [0, 1]) -> [B, dim] features ``[sin(s t f_k), cos(s t f_k)]``.

    ``s = scale`` (1000, so that the t in [0, 1] spans the range a 1000-step diffusion index would) and
    ``f_k = max_period ** (-k / (half - 1))``, k = 0..half-1 (frequencies from 1 down to 1/max_period).
    An odd ``dim`` gets one trailing zero column.
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        if dim < 2:
            raise ValueError(f"time embedding dim must be >= 2, got {dim}")
        self.dim, self.scale = dim, scale
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = (self.scale * t.reshape(-1, 1).float()) * self.freqs[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
        if self.dim % 2:
            emb = F.pad(emb, (0, 1))
        return emb


class Conv1dBlock(nn.Sequential):
    """Conv1d (same length) -> GroupNorm -> Mish."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int):
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2), nn.GroupNorm(n_groups, out_ch), nn.Mish()
        )


class CondResBlock1D(nn.Module):
    """Two ``Conv1dBlock``s with FiLM ``(1 + scale) * h + bias`` from the condition in between; residual 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.block1 = Conv1dBlock(in_ch, out_ch, kernel_size, n_groups)
        self.block2 = Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_ch))
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.block2(h * (1.0 + scale) + bias)
        return h + self.skip(x)


class TemporalUNet1D(nn.Module):
    """``forward(x [B, H, A], t [B], cond [B, cond_dim]) -> [B, H, A]``; see the module docstring."""

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        dims: tuple[int, ...] = (64, 128, 256),
        kernel_size: int = 5,
        time_embed_dim: int = 64,
        n_groups: int = 8,
    ):
        super().__init__()
        dims = tuple(int(d) for d in dims)
        if len(dims) < 1:
            raise ValueError("unet dims must name at least one level")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"unet kernel_size must be odd (same-length convolutions), got {kernel_size}")
        bad = [d for d in dims if d % n_groups]
        if bad:
            raise ValueError(f"unet dims {dims}: every width must be divisible by n_groups={n_groups} (not {bad})")
        self.action_dim, self.dims = action_dim, dims
        self.multiple = 2 ** (len(dims) - 1)
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(time_embed_dim),
            nn.Linear(time_embed_dim, 4 * time_embed_dim),
            nn.Mish(),
            nn.Linear(4 * time_embed_dim, time_embed_dim),
        )
        c = time_embed_dim + cond_dim

        def res(i: int, o: int) -> CondResBlock1D:
            return CondResBlock1D(i, o, c, kernel_size, n_groups)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = action_dim
        for i, d in enumerate(dims):
            self.down.append(nn.ModuleList([res(prev, d), res(d, d)]))
            if i < len(dims) - 1:
                self.downsample.append(nn.Conv1d(d, d, 3, stride=2, padding=1))
            prev = d
        self.mid = nn.ModuleList([res(dims[-1], dims[-1]), res(dims[-1], dims[-1])])
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in range(len(dims) - 2, -1, -1):  # decoder levels, coarse to fine
            self.upsample.append(nn.ConvTranspose1d(dims[i + 1], dims[i + 1], 4, stride=2, padding=1))
            self.up.append(nn.ModuleList([res(dims[i + 1] + dims[i], dims[i]), res(dims[i], dims[i])]))
        self.final = nn.Sequential(
            Conv1dBlock(dims[0], dims[0], kernel_size, n_groups), nn.Conv1d(dims[0], action_dim, 1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        B, H, A = x.shape
        if A != self.action_dim:
            raise ValueError(
                f"TemporalUNet1D built for action_dim={self.action_dim}, got chunk of shape {tuple(x.shape)}"
            )
        c = torch.cat([self.time_mlp(t.reshape(B)), cond], dim=-1)
        h = x.transpose(1, 2)  # [B, A, H]
        pad = (-H) % self.multiple
        if pad:
            h = F.pad(h, (0, pad))
        skips = []
        for i, (r1, r2) in enumerate(self.down):
            h = r2(r1(h, c), c)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        for r in self.mid:
            h = r(h, c)
        for j, (up, (r1, r2)) in enumerate(zip(self.upsample, self.up)):
            level = len(self.dims) - 2 - j
            h = torch.cat([up(h), skips[level]], dim=1)
            h = r2(r1(h, c), c)
        out = self.final(h)[..., :H]
        return out.transpose(1, 2)
