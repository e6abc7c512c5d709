"""Networks: MLPs (+LayerNorm), critic ensembles, value heads, the 1D temporal U-Net with FiLM."""

from rlft.nets.ensemble import CriticEnsemble, ValueNet
from rlft.nets.mlp import MLP

__all__ = ["MLP", "CriticEnsemble", "ValueNet"]
