"""Training progress over `max_steps` with the latest train/val metrics: a bar on a terminal, plain lines in a log.

Lightning's bars count batches of an epoch and redraw per batch; grokking runs are one endless epoch of
cheap full-batch steps, so this bar counts optimiser steps and redraws by time instead.

When stderr is not a terminal (a SLURM job, `2> log`), carriage-return redraws only pile up in the file, so the
callback prints one plain line every `plain_every_seconds` instead, plus a line when training starts and ends.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm

PREFIX = "[grokking-lab]"


def format_duration(seconds: float) -> str:
    """`45s`, `3m33s`, `2h05m`: short enough for a progress line."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


class StepProgressBar(ProgressBar):
    """`plain`: None detects from stderr (a terminal gets the bar), True/False forces plain lines or the bar.
    `also`: one more metric shown after `metrics` unless among them (the run's optimized metric).
    `clock` is the time source of the plain lines (tests pass a fake one)."""

    def __init__(self, refresh_seconds: float = 0.25,
                 metrics: Sequence[str] = ("train/loss", "train/acc", "val/loss", "val/acc"),
                 plain_every_seconds: float = 30.0, plain: bool | None = None, also: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.refresh_seconds = refresh_seconds
        self.metrics = tuple(metrics) + ((also,) if also and also not in metrics else ())
        self.plain_every_seconds = plain_every_seconds
        self.plain = plain
        self.clock = clock
        self._enabled = True
        self._bar: tqdm | None = None
        self._last_draw = 0.0
        self._plain_active = False
        self._start: tuple[float, int] = (0.0, 0)      # (time, step) when training started
        self._last_line: tuple[float, int] = (0.0, 0)  # (time, step) of the last plain line

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @staticmethod
    def _total(trainer: pl.Trainer) -> int | None:
        return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None

    def _metric_values(self, trainer: pl.Trainer) -> dict[str, str]:
        """The configured metrics logged so far, formatted alike for the bar and the plain lines."""
        found = {k: trainer.callback_metrics[k] for k in self.metrics if k in trainer.callback_metrics}
        return {k: f"{float(v):.4f}" for k, v in found.items()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled:
            return
        if self._use_plain():
            self._start_plain(trainer)
            return
        self._bar = tqdm(total=self._total(trainer), initial=trainer.global_step, desc="steps", dynamic_ncols=True,
                         mininterval=self.refresh_seconds, smoothing=0.1)

    def _use_plain(self) -> bool:
        return self.plain if self.plain is not None else not stderr_is_terminal()

    def _draw(self, trainer: pl.Trainer) -> None:
        assert self._bar is not None
        self._bar.n = trainer.global_step
        self._bar.set_postfix(self._metric_values(trainer), refresh=False)
        self._bar.refresh()
        self._last_draw = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._plain_active:
            if self.clock() - self._last_line[0] >= self.plain_every_seconds:
                self._print_progress(trainer)
        elif self._bar is not None and time.monotonic() - self._last_draw >= self.refresh_seconds:
            self._draw(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._plain_active:
            self._print_end(trainer)
            self._plain_active = False
        if self._bar is not None:
            self._draw(trainer)
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._plain_active = False  # the launcher reports how the run ended
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # plain lines, for logs -------------------------------------------------------------------------------------

    def _start_plain(self, trainer: pl.Trainer) -> None:
        self._plain_active = True
        self._start = self._last_line = (self.clock(), trainer.global_step)
        self._emit(f"training from {self._position(trainer.global_step, self._total(trainer))}; "
                   f"a line every {self.plain_every_seconds:g} s")

    @staticmethod
    def _position(step: int, total: int | None) -> str:
        """`step 1200/10000 (12%)`, or `step 1200` without a step budget."""
        return f"step {step}/{total} ({100 * step // total}%)" if total else f"step {step}"

    def _print_progress(self, trainer: pl.Trainer) -> None:
        """One line: position, speed over the interval since the previous line (not since start), eta, metrics."""
        now, step, total = self.clock(), trainer.global_step, self._total(trainer)
        then, step_then = self._last_line
        parts = [self._position(step, total)]
        if now > then:
            rate = (step - step_then) / (now - then)
            parts.append(f"{rate:.1f} steps/s")
            if total and rate > 0:
                parts[-1] += f", eta {format_duration((total - step) / rate)}"
        self._emit(" ".join(parts) + self._metrics_text(trainer))
        self._last_line = (now, step)

    def _print_end(self, trainer: pl.Trainer) -> None:
        """The last line: where training ended, and the average speed of this process's share of it."""
        now, step = self.clock(), trainer.global_step
        started, first_step = self._start
        done, elapsed = step - first_step, now - started
        speed = f" ({done / elapsed:.1f} steps/s)" if elapsed > 0 else ""
        self._emit(f"training ended at {self._position(step, self._total(trainer))}: {done} steps in "
                   f"{format_duration(elapsed)}{speed}" + self._metrics_text(trainer))

    def _metrics_text(self, trainer: pl.Trainer) -> str:
        values = self._metric_values(trainer)
        return " | " + " ".join(f"{k} {v}" for k, v in values.items()) if values else ""

    @staticmethod
    def _emit(line: str) -> None:
        print(f"{PREFIX} {line}", file=sys.stderr, flush=True)
