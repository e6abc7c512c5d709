"""Image encoders for camera observations: uint8 frames in, a flat feature vector out.

Two trunks, both trained from scratch:

* ``conv`` (DrQ-v2, Yarats et al. 2021): four 3x3 convolutions of 32 channels (the first with stride 2), ReLU, then a
  linear layer + LayerNorm + tanh to ``feature_dim``.
* ``resnet18`` (Diffusion Policy, Chi et al. 2023): a ResNet-18 whose BatchNorms are GroupNorms (groups of 16
  channels), its global pooling replaced by a spatial softmax over 32 keypoints (Levine et al. 2016: the expected
  image coordinates of each keypoint map), then a linear layer to ``feature_dim``.

Input: ``{camera: [B, To, H, W, C] uint8}`` (``ChunkBatch.images``: the history To of each camera). Each camera has its
own trunk; its To frames are stacked along the channels (frame stacking, as DrQ), scaled to [-0.5, 0.5] and, in
training, randomly shifted (``random_shift``); the cameras' features are concatenated in the spec's camera order.

Who trains the encoder is the algorithm's choice (``Algorithm.encoder_training``): BC trains it end to end with the
policy; an algorithm that does not train it sees its features detached (the encoder of an earlier stage, frozen).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rlft.errors import ConfigError


@dataclasses.dataclass
class EncoderSpec:
    """What a policy's image encoder looks like (saved with the policy; JSON-able)."""

    image_shapes: dict[str, tuple[int, int, int, int]]
    """{camera: (To, H, W, C)} of the frames the encoder takes."""
    state_dim: int
    """Dim of the (history-stacked) state vector that goes with the frames."""
    kind: Literal["conv", "resnet18"] = "conv"
    """The trunk (module docstring)."""
    feature_dim: int = 64
    """Features per camera."""
    shift_pad: int = 4
    """Random-shift augmentation in training: pad by this many pixels (replicate) and crop back at a random offset
    (DrQ's 4 for 84x84 frames); 0 = off."""

    def __post_init__(self) -> None:
        self.image_shapes = {c: tuple(int(d) for d in s) for c, s in self.image_shapes.items()}
        if not self.image_shapes:
            raise ConfigError("encoder: no camera given")
        for c, s in self.image_shapes.items():
            if len(s) != 4 or min(s) < 1:
                raise ConfigError(f"encoder: camera {c!r} must have a (To, H, W, C) shape, got {s}")
        if self.kind not in ("conv", "resnet18"):
            raise ConfigError(f"encoder.kind must be 'conv' or 'resnet18', got {self.kind!r}")
        if self.feature_dim < 1 or self.shift_pad < 0:
            raise ConfigError("encoder: feature_dim must be >= 1 and shift_pad >= 0")

    @property
    def out_dim(self) -> int:
        """Width of the features (all cameras)."""
        return self.feature_dim * len(self.image_shapes)


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ's augmentation: replicate-pad [B, C, H, W] by ``pad`` pixels, then crop each image back to H x W at an
    integer offset drawn uniformly in [0, 2 * pad] per image and axis (reproducible with ``generator``)."""
    if pad == 0:
        return x
    B, _, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    off = torch.randint(0, 2 * pad + 1, (B, 2), generator=generator, device="cpu").to(x.device)
    rows = off[:, 0, None] + torch.arange(H, device=x.device)  # [B, H]
    cols = off[:, 1, None] + torch.arange(W, device=x.device)  # [B, W]
    b = torch.arange(B, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class SpatialSoftmax(nn.Module):
    """[B, C, H, W] -> [B, 2K]: a 1x1 convolution to K keypoint maps, a softmax over each map's pixels, and the
    expected (x, y) in [-1, 1] under it."""

    def __init__(self, channels: int, keypoints: int = 32):
        super().__init__()
        self.proj = nn.Conv2d(channels, keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        B, K, H, W = h.shape
        p = torch.softmax(h.reshape(B, K, H * W), -1).reshape(B, K, H, W)
        ys = torch.linspace(-1, 1, H, device=x.device)
        xs = torch.linspace(-1, 1, W, device=x.device)
        return torch.cat([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], 1)


class _Block(nn.Module):
    """ResNet basic block with GroupNorm."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = nn.GroupNorm(cout // 16, cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = nn.GroupNorm(cout // 16, cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(cout // 16, cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(self.c1(x)))
        return F.relu(self.n2(self.c2(h)) + self.skip(x))


def _resnet18(cin: int, feature_dim: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(cin, 64, 7, 2, 3, bias=False), nn.GroupNorm(4, 64), nn.ReLU()]
    widths, c = (64, 128, 256, 512), 64
    for i, w in enumerate(widths):
        layers += [_Block(c, w, 1 if i == 0 else 2), _Block(w, w, 1)]
        c = w
    return nn.Sequential(*layers, SpatialSoftmax(c), nn.Linear(64, feature_dim))


def _conv(cin: int, hw: tuple[int, int], feature_dim: int) -> nn.Module:
    trunk = nn.Sequential(
        nn.Conv2d(cin, 32, 3, 2), nn.ReLU(),
        nn.Conv2d(32, 32, 3, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, 1), nn.ReLU(),
        nn.Flatten(),
    )  # fmt: skip
    with torch.no_grad():
        n = trunk(torch.zeros(1, cin, *hw)).shape[1]
    return nn.Sequential(trunk, nn.Linear(n, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())


class ImageEncoder(nn.Module):
    """``{camera: [B, To, H, W, C] uint8}`` -> features [B, spec.out_dim] (module docstring)."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self.trunks = nn.ModuleDict()
        for cam, (To, H, W, C) in spec.image_shapes.items():
            cin = To * C
            self.trunks[cam] = (
                _conv(cin, (H, W), spec.feature_dim) if spec.kind == "conv" else _resnet18(cin, spec.feature_dim)
            )

    def forward(
        self, images: dict[str, torch.Tensor], augment: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        feats = []
        for cam, trunk in self.trunks.items():
            if cam not in images:
                raise ConfigError(f"encoder: camera {cam!r} missing from the observation (has {sorted(images)})")
            x = images[cam]
            want = self.spec.image_shapes[cam]
            if x.dtype != torch.uint8 or tuple(x.shape[1:]) != want:
                raise ConfigError(
                    f"encoder: camera {cam!r} must be uint8 [B, {', '.join(map(str, want))}], got {x.dtype} {tuple(x.shape)}"
                )
            B, To, H, W, C = x.shape
            dtype = next(trunk.parameters()).dtype  # float32, or float64 for a parity reference
            x = x.permute(0, 1, 4, 2, 3).reshape(B, To * C, H, W).to(dtype) / 255.0 - 0.5
            if augment:
                x = random_shift(x, self.spec.shift_pad, generator)
            feats.append(trunk(x))
        return torch.cat(feats, 1)
