"""Regularisers: small callables with a weight λ, reading the same `NetOutput` the task loss saw.

The `regularizer` config group builds a mapping name -> Regularizer (empty for `none`); the module adds
λ·term to the loss and logs each term as `train/reg/<name>`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from core.errors import require
from core.output import NetOutput

if TYPE_CHECKING:
    import lightning.pytorch as pl


class Regularizer:
    """Base class: subclasses implement `term(output)`; the module multiplies it by `weight`."""

    def __init__(self, weight: float):
        require(isinstance(weight, (int, float)) and weight >= 0, "weight", weight, "a number >= 0")
        self.weight = float(weight)

    def bind(self, module: "pl.LightningModule") -> None:
        """Called once when fitting starts; a term that evaluates the net beyond the batch keeps what it needs."""

    def term(self, output: NetOutput) -> Tensor:
        raise NotImplementedError

    def __call__(self, output: NetOutput) -> Tensor:
        return self.term(output)
