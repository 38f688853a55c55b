"""Activation functions by name, the one list every net with a configurable activation accepts."""
from __future__ import annotations

from torch import nn

from core.errors import require

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    require(name in ACTIVATIONS, "activation", name, ", ".join(ACTIVATIONS))
    return ACTIVATIONS[name]()
