"""`checkpoints/last.ckpt`: the state a run resumes from, written so that the resumed run logs exactly the rows,
and ends on exactly the metrics, of an uninterrupted one.

When: every `every_n_train_steps` steps, every `every_minutes` minutes, at the first validation (so a crash in the
first minutes keeps something), at the last step, and when SIGINT or SIGTERM asked the run to stop (see
`callbacks.run.stop_request`); the run then ends with `RunInterrupted` before the next step starts.

Where in a step: Lightning resumes a checkpoint taken in `on_train_batch_end` or `on_validation_end` without
repeating or skipping anything, but it does not log again what the interrupted step logged after that point (the
step's training row, its validation). So a checkpoint is taken at the end of a validation, or in
`on_train_batch_end` of a step that logs nothing; periodic ones wait for the next such step (at most a few).
The file is written to a temporary name and renamed, and the loggers are flushed first, so a kill at any moment
leaves a complete checkpoint whose rows are all on disk.

Under DDP every rank must save at the same step (saving ends in a barrier), but each has its own clock and its
own signals. So the ranks agree on "time to checkpoint" and "stop requested" with one collective on logging steps
(the steps that read the device anyway): if any rank wants either, all act on it at the same step.

Under the captured CUDA-graph step (`module.cuda_graph`) everything here runs between replays: the stop check in
`on_train_batch_start` only raises before a step starts, so the replay of that step never runs and the weights
are those `last.ckpt` holds.
"""
from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from callbacks.run.stop_request import stop_request
from core.errors import RunInterrupted, require
from lightning_modules.cadence import is_log_step

LAST = "last.ckpt"


def validates_after(trainer: pl.Trainer) -> bool:
    """Will Lightning run validation at the end of the step now in `on_train_batch_end`? (Its own rule for an
    endless epoch: every `val_check_batch` batches, or when a stop was asked for.)"""
    if not trainer.enable_validation:
        return False
    if trainer.should_stop:
        return True
    every = trainer.val_check_batch
    return every != math.inf and (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % every == 0


def logs_after(trainer: pl.Trainer) -> bool:
    """Will Lightning emit the training row of the step now in `on_train_batch_end`?"""
    every = trainer.log_every_n_steps
    return every > 0 and trainer.global_step % every == 0


class RunCheckpoint(Checkpoint):
    def __init__(self, dirpath: str, every_n_train_steps: int | None = 1000, every_minutes: float | None = 5.0,
                 at_first_validation: bool = True):
        require(every_n_train_steps is None or (isinstance(every_n_train_steps, int) and every_n_train_steps > 0),
                "every_n_train_steps", every_n_train_steps, "null or an integer > 0")
        require(every_minutes is None or (isinstance(every_minutes, (int, float)) and every_minutes > 0),
                "every_minutes", every_minutes, "null or a number > 0")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps, self.every_minutes = every_n_train_steps, every_minutes
        self.at_first_validation = at_first_validation
        self.saved_step: int | None = None  # the step of the last checkpoint written in this session
        self._due: str | None = None  # why a checkpoint is owed at the next safe point
        self._stop_signal: int | None = None  # the stop signal the ranks agreed on (DDP)
        self._last_time = time.monotonic()
        self._validated = False
        self._start_step = 0

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_time, self._validated = time.monotonic(), False
        self.saved_step, self._stop_signal = None, None
        self._start_step = trainer.global_step  # > 0 when resumed: that checkpoint already holds this state
        if trainer.world_size == 1:
            # Lightning's own SIGTERM handler stops inside validation without a checkpoint; under DDP it also
            # tells the other processes, so it stays in charge there
            stop_request.reclaim(signal.SIGTERM)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # a stop asked for during the previous step was honoured at its end (or nothing was done yet); one that
        # came after that step's last safe point waits for the end of this step
        signum = stop_request.signum if trainer.world_size == 1 else self._stop_signal
        if signum is not None and trainer.global_step in (self.saved_step, self._start_step):
            raise RunInterrupted(signum, trainer.global_step)

    def agreed(self, trainer: pl.Trainer) -> tuple[int | None, bool]:
        """(the stop signal a rank received, or None; whether a rank's clock says a checkpoint is due), the same on
        every rank: a single process decides alone every step; under DDP the ranks compare on logging steps only,
        with one collective (every step when logging is off), and until then none acts on its own."""
        time_up = bool(self.every_minutes) and time.monotonic() - self._last_time >= 60 * self.every_minutes
        if trainer.world_size == 1:
            return stop_request.signum, time_up
        if is_log_step(trainer.global_step, trainer) or trainer.log_every_n_steps <= 0:
            wants = torch.tensor([stop_request.signum or 0, time_up], device=trainer.strategy.root_device)
            signum, time_up = trainer.strategy.reduce(wants, reduce_op="max").tolist()
            self._stop_signal = self._stop_signal or (int(signum) or None)
            return self._stop_signal, bool(time_up)
        return self._stop_signal, False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        signum, time_up = self.agreed(trainer)
        if signum is not None:
            self._due = "stop"
        elif step >= trainer.max_steps > 0:
            self._due = "end"
        elif self.every_n_train_steps and step % self.every_n_train_steps == 0:
            self._due = self._due or "every_n_train_steps"
        elif time_up:
            self._due = self._due or "every_minutes"
        if not self._due or validates_after(trainer):
            return  # nothing owed, or saved at the end of this step's validation
        if self._due in ("stop", "end") or not logs_after(trainer):
            self.save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        first = not self._validated
        self._validated = True
        if self._due or trainer.should_stop or (first and self.at_first_validation and self._start_step == 0):
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        """Flush the loggers, then write `last.ckpt` atomically (a temporary file renamed over it)."""
        for logger in trainer.loggers:
            logger.save()
        tmp = self.path.with_name(LAST + ".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self.saved_step, self._due, self._last_time = trainer.global_step, None, time.monotonic()


def best_net_state(trainer: pl.Trainer) -> tuple[dict[str, torch.Tensor], int] | None:
    """(the net's state_dict, its step) from the best checkpoint by the monitored metric; None before one exists."""
    best = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor and c.best_model_path),
                None)
    if best is None:
        return None
    checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    return state, int(checkpoint["global_step"])
