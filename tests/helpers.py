"""Test-only pieces that configs can point `_target_` at."""
from __future__ import annotations

import lightning.pytorch as pl
import torch

from callbacks.run_checkpoint import RunCheckpoint
from datamodules import ModularArithmetic
from datamodules.loaders import EvalBatches
from lightning_modules.regularizers import Regularizer


class NaNAfter(Regularizer):
    """Contributes 0 for `after` training calls, then NaN: a run that diverges at a known step."""

    def __init__(self, weight: float = 1.0, after: int = 25):
        super().__init__(weight)
        self.after, self.calls = after, 0

    def term(self, output):
        self.calls += 1
        value = 0.0 if self.calls <= self.after else float("nan")
        return torch.tensor(value, device=output.logits.device)


class NaNSwitch(Regularizer):
    """Contributes 0 until a `FlipToNaN` callback flips it, then NaN. The value lives in a device tensor the term
    reads, so a captured CUDA-graph step sees the flip too (a Python-side counter would be frozen at capture)."""

    instances: list["NaNSwitch"] = []

    def __init__(self, weight: float = 1.0):
        super().__init__(weight)
        self.value: torch.Tensor | None = None
        NaNSwitch.instances.append(self)

    def term(self, output):
        if self.value is None:
            self.value = torch.zeros((), device=output.logits.device)
        return self.value * 1.0


class FlipToNaN(pl.Callback):
    """After `at` optimiser steps, every NaNSwitch turns NaN."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at:
            for switch in NaNSwitch.instances:
                if switch.value is not None:
                    switch.value.fill_(float("nan"))


class RecordingCheckpoint(RunCheckpoint):
    """RunCheckpoint that remembers at which steps it wrote `last.ckpt`."""

    saved: list[int] = []

    def save(self, trainer):
        super().save(trainer)
        RecordingCheckpoint.saved.append(trainer.global_step)


class ValidatesOnTrain(ModularArithmetic):
    """Modular arithmetic whose validation split is the training split: train and val accuracy then measure the
    same examples, so they differ only in which weights they see."""

    def val_dataloader(self) -> EvalBatches:
        return EvalBatches(self.splits["train"], self.eval_batch_size)


class TrainAccuracyProbe(pl.Callback):
    """Before every training step, the train accuracy of the current weights, measured apart from the module's
    own metrics: `accs[k]` is that of the weights after k optimiser updates. `runs[-1]` is the latest probe."""

    runs: list["TrainAccuracyProbe"] = []

    def __init__(self):
        self.accs: list[float] = []
        TrainAccuracyProbe.runs.append(self)

    def on_train_batch_start(self, trainer, pl_module, *args):
        assert len(self.accs) == trainer.global_step
        self.accs.append(pl_module.evaluate(trainer.datamodule.splits["train"])["acc"])
