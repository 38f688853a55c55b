"""What every diagnostic callback shares: a cadence in steps, logging scalars and figures to every logger.

A diagnostic measures something every `every_n_steps` optimiser steps (and once more when training ends), logs
scalars under its docs/architecture.md prefix to every active logger, and publishes figures to every logger that takes
images (W&B) and as PNGs in the run's `plots/` folder. History a diagnostic needs for its plots is kept in
`self.history` and saved in checkpoints, so a resumed run draws the whole curve.

Diagnostics run on any task (datamodules.task): probes come from `examples(split, n)`, structure only some tasks
have from its optional methods. When fitting starts, a diagnostic whose `requirements` the task does not meet
stands aside: one line says why, and it does nothing for the rest of the run (a run never fails for a diagnostic).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure
from torch import Tensor

from core.errors import require
from core.output import NetOutput


def plots_dir(trainer: pl.Trainer) -> Path:
    path = Path(trainer.default_root_dir) / "plots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish_figure(trainer: pl.Trainer, name: str, figure: Figure) -> Path:
    """Save `figure` as `plots/<name>.png` (slashes become `_`) and log it to every logger that takes images."""
    path = plots_dir(trainer) / f"{name.replace('/', '_')}.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=f"plots/{name}", images=[str(path)], step=max(trainer.global_step - 1, 0))
    return path


def new_figure(width: float = 6.0, height: float = 4.0) -> Figure:
    """A figure not registered with pyplot: no GUI backend, no global state, freed when dropped."""
    return Figure(figsize=(width, height), layout="constrained")


@torch.no_grad()
def eval_forward(pl_module: pl.LightningModule, inputs: Tensor, **kwargs: Any) -> NetOutput:
    """The net's output in eval mode (deterministic gates, no dropout); the training mode is restored."""
    was_training = pl_module.training
    pl_module.eval()
    try:
        return pl_module.net(inputs, **kwargs)
    finally:
        pl_module.train(was_training)


def log_scalars(trainer: pl.Trainer, metrics: dict[str, float | Tensor]) -> None:
    """Log on the row of the step just done (loggers count from 0: steps done - 1), as the module's metrics are."""
    values = {k: float(v) for k, v in metrics.items()}
    for logger in trainer.loggers:
        logger.log_metrics(values, step=max(trainer.global_step - 1, 0))


class Diagnostic(Callback):
    """Base class: subclasses implement `measure` (and optionally `plot`, `requirements`); this class decides when.

    every_n_steps: measure (and log) every this many optimiser steps, at the start and when training ends; null
        for a diagnostic that records on events of its own (e.g. validation) and only draws here.
    plot_every_n_steps: redraw the figures this often (a multiple of every_n_steps is sensible) and at the end;
        null draws only at the end; `plot: false` never draws.
    """

    name = "diagnostic"  # what the stand-aside line calls it: its key under `callbacks`

    def __init__(self, every_n_steps: int | None = 500, plot_every_n_steps: int | None = None, plot: bool = True):
        require(every_n_steps is None or (isinstance(every_n_steps, int) and every_n_steps >= 1), "every_n_steps",
                every_n_steps, "null or an integer >= 1")
        require(plot_every_n_steps is None or (isinstance(plot_every_n_steps, int) and plot_every_n_steps >= 1),
                "plot_every_n_steps", plot_every_n_steps, "null or an integer >= 1")
        self.every_n_steps = every_n_steps
        self.plot_every_n_steps = plot_every_n_steps
        self.plot_enabled = plot
        self.history: list[dict[str, Any]] = []
        self._last_measured: int | None = None
        self.stood_aside: str | None = None  # why this diagnostic is off for the run, once it stood aside

    def requirements(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        """What this task lacks that the diagnostic needs (said in the stand-aside line), or None when it can run.
        Checked once when fitting starts, after the task's `setup`."""
        return None

    def stand_aside(self, trainer: pl.Trainer, reason: str) -> None:
        """Turn this diagnostic off for the rest of the run, saying why in one line (once, on the main process)."""
        if self.stood_aside is None and getattr(trainer, "is_global_zero", True):
            print(f"[grokking-lab] {self.name}: stands aside ({reason})", flush=True)
        self.stood_aside = reason

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.stood_aside is None and (reason := self.requirements(trainer, pl_module)):
            self.stand_aside(trainer, reason)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Return scalars to log at this step; append to `self.history` what the plots need."""
        return {}

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw from `self.history` and `publish_figure` each figure."""

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (self.every_n_steps is None or self.stood_aside or self._last_measured == trainer.global_step
                or trainer.sanity_checking):
            return
        self._last_measured = trainer.global_step
        metrics = self.measure(trainer, pl_module)
        if metrics:
            log_scalars(trainer, metrics)

    def _plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.plot_enabled and not self.stood_aside and trainer.is_global_zero:
            self.plot(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0:  # the state at initialisation (not again on resume)
            self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            self._measure(trainer, pl_module)
        if self.plot_every_n_steps and step % self.plot_every_n_steps == 0:
            self._plot(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measure(trainer, pl_module)
        self._plot(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
