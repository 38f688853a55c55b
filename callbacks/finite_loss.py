"""Stops a run whose loss turns NaN or inf before the bad step is applied, so the last checkpoint stays good."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or inf; raised before backward, so no weight was touched by it."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"training loss is {value} at step {step}; stopped before applying it")


class FiniteLossGuard(Callback):
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(trainer.global_step, float(loss))
