"""Training and evaluation speed in tokens per second, the figure a language-model comparison is judged by.

A token is one input position of a batch (a byte of a text window; an equation's tokens; one row of one-hot data
counts as one). Training speed is measured over the steps between two logging steps (the device is synchronised
at each logging step, nowhere else, so a step pays nothing for it), evaluation speed over each validation pass.
Logged: `speed/train_tokens_per_s` on logging steps and `speed/val_tokens_per_s` after each validation.
summary.json gets `speed`: the mean training speed after the first `skip_steps` steps (compilation, allocator
warm-up and the first validation would otherwise count), the mean evaluation speed, and the tokens trained on.
"""
from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from core.errors import require
from lightning_modules.cadence import is_log_step


def batch_tokens(batch: Any) -> int:
    """Input positions in this process's batch (under DDP each process serves its shard)."""
    inputs = batch.inputs
    return inputs.shape[0] * (inputs.shape[1] if inputs.ndim == 2 and not inputs.is_floating_point() else 1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput(Callback):
    """skip_steps: training steps left out of the summary's mean (their windows are still logged)."""

    summary_key = "speed"

    def __init__(self, skip_steps: int = 20):
        require(isinstance(skip_steps, int) and skip_steps >= 0, "skip_steps", skip_steps, "an integer >= 0")
        self.skip_steps = skip_steps
        self._window_start: float | None = None
        self._window_tokens = 0
        self._steady_time = self._steady_tokens = 0.0
        self._eval_start = 0.0
        self._eval_tokens = 0
        self._eval_speeds: list[float] = []
        self.tokens_seen = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args) -> None:
        if self._window_start is None:
            synchronize(pl_module.device)
            self._window_start = time.perf_counter()
        self._window_tokens += batch_tokens(batch) * trainer.world_size

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if not is_log_step(step, trainer) or self._window_start is None:
            return
        synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._window_start
        self.tokens_seen += self._window_tokens
        if elapsed > 0:
            pl_module.log("speed/train_tokens_per_s", self._window_tokens / elapsed)
            if step > self.skip_steps:
                self._steady_time += elapsed
                self._steady_tokens += self._window_tokens
        self._window_start, self._window_tokens = None, 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.tokens_seen += self._window_tokens  # a window the last logging step did not close
        self._window_start, self._window_tokens = None, 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        self._eval_start, self._eval_tokens = time.perf_counter(), 0

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  *args: Any) -> None:
        self._eval_tokens += batch_tokens(batch) * trainer.world_size

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._eval_start
        if trainer.sanity_checking or elapsed <= 0 or not self._eval_tokens:
            return
        self._eval_speeds.append(self._eval_tokens / elapsed)
        pl_module.log("speed/val_tokens_per_s", self._eval_speeds[-1])
        # the validation pass interrupts a training window: its time is not training time
        if self._window_start is not None:
            self._window_start += elapsed

    def summary_part(self) -> dict[str, float] | None:
        part = {"train_tokens_per_s": self._steady_tokens / self._steady_time if self._steady_time else None,
                "val_tokens_per_s": sum(self._eval_speeds) / len(self._eval_speeds) if self._eval_speeds else None,
                "train_tokens": self.tokens_seen}
        return {key: value for key, value in part.items() if value is not None} or None
