"""A progress bar over `max_steps` showing the latest train/val accuracy, redrawn a few times a second.

Lightning's bars count batches of an epoch and redraw per batch; grokking runs are one endless epoch of
cheap full-batch steps, so this bar counts optimiser steps and redraws by time instead.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm


class StepProgressBar(ProgressBar):
    def __init__(self, refresh_seconds: float = 0.25,
                 metrics: Sequence[str] = ("train/loss", "train/acc", "val/loss", "val/acc")):
        super().__init__()
        self.refresh_seconds = refresh_seconds
        self.metrics = tuple(metrics)
        self._enabled = True
        self._bar: tqdm | None = None
        self._last_draw = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled:
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._bar = tqdm(total=total, initial=trainer.global_step, desc="steps", dynamic_ncols=True,
                         mininterval=self.refresh_seconds, smoothing=0.1)

    def _draw(self, trainer: pl.Trainer) -> None:
        assert self._bar is not None
        self._bar.n = trainer.global_step
        found = {k: trainer.callback_metrics[k] for k in self.metrics if k in trainer.callback_metrics}
        self._bar.set_postfix({k: f"{float(v):.4f}" for k, v in found.items()}, refresh=False)
        self._bar.refresh()
        self._last_draw = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._bar is not None and time.monotonic() - self._last_draw >= self.refresh_seconds:
            self._draw(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._draw(trainer)
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
