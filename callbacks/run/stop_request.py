"""SIGINT (Ctrl-C) and SIGTERM (what SLURM sends before it kills a job) as a request to stop cleanly.

The handler only records the signal; training stops at the next step boundary, where `callbacks.RunCheckpoint`
writes `last.ckpt` and raises `RunInterrupted`. A second Ctrl-C stops at once (Python's KeyboardInterrupt),
for a step that never ends.
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import lightning.pytorch as pl

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Process-wide: which stop signal arrived first (None while none has)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (main thread only, as Python requires); `restore` gives them back."""
        if threading.current_thread() is not threading.main_thread():
            return
        self.signum = None
        for signum in STOP_SIGNALS:
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self.handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def reclaim(self, signum: int) -> None:
        """Handle `signum` here again after a library replaced the handler (Lightning does for SIGTERM)."""
        if self._previous and threading.current_thread() is threading.main_thread():
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        if self.signum is None:
            self.signum = signum
            print(f"\n[grokking-lab] {signal.Signals(signum).name} received: stopping after this step and writing "
                  "checkpoints/last.ckpt (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None


stop_request = StopRequest()


class StopAtStepBoundary(pl.Callback):
    """A stop request ends training after the step it arrived in, for trainers without `RunCheckpoint` (an
    ensemble, whose engine then writes every member's weights and summary.json). Lightning's own SIGTERM handler,
    installed at fit start, would raise inside the loop instead: the request takes SIGTERM back once training
    starts."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stop_request.reclaim(signal.SIGTERM)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if stop_request.requested:
            trainer.should_stop = True
