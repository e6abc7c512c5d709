"""Plain MLP with optional LayerNorm after each hidden layer."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """in_dim -> hidden_dims (Linear, [LayerNorm], activation) -> out_dim (Linear)."""

    def __init__(self, in_dim: int, hidden_dims: tuple[int, ...], out_dim: int, layernorm: bool = False, act=nn.ReLU):
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden_dims:
            layers.append(nn.Linear(d, h))
            if layernorm:
                layers.append(nn.LayerNorm(h))
            layers.append(act())
            d = h
        layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)
