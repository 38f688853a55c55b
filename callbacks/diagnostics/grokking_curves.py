"""The grokking figure of the seeds: train and val accuracy and loss over steps, grokking steps marked.

Records the latest train metrics and the validation metrics after every validation, and draws
`grok/curves` (accuracy, and loss on a log scale) with a vertical line at each step `GrokkingTime` recorded.
Where the data module gives theoretical loss bounds (`loss_bounds()`), they are drawn as reference lines. Any task:
it reads only the logged metrics (a task without `acc` leaves that panel empty).
"""
from __future__ import annotations

import lightning.pytorch as pl

from callbacks.diagnostics.base import Diagnostic, new_figure, publish_figure
from callbacks.run.grokking_time import GrokkingTime

KEYS = ("train/acc", "train/loss", "val/acc", "val/loss")


class GrokkingCurves(Diagnostic):
    name = "grokking_curves"

    def __init__(self, plot_every_n_steps: int | None = 2000):
        super().__init__(every_n_steps=None, plot_every_n_steps=plot_every_n_steps)  # records on validation

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        row = {"step": trainer.global_step} | {k: float(metrics[k]) for k in KEYS if k in metrics}
        self.history.append(row)

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:
            return
        fig = new_figure(10, 3.8)
        acc_ax, loss_ax = fig.subplots(1, 2)
        for split, colour in (("train", "C0"), ("val", "C1")):
            for ax, what in ((acc_ax, "acc"), (loss_ax, "loss")):
                points = [(h["step"], h[f"{split}/{what}"]) for h in self.history if f"{split}/{what}" in h]
                if points:
                    ax.plot(*zip(*points), color=colour, label=split)
        grok = next((c for c in trainer.callbacks if isinstance(c, GrokkingTime)), None)
        for i, (key, step) in enumerate(sorted((grok.steps if grok else {}).items())):
            if step is not None:
                for ax in (acc_ax, loss_ax):
                    ax.axvline(step, color=f"C{2 + i}", ls=":", lw=1,
                               label=key.removeprefix("grok/") if ax is acc_ax else None)
        bounds = getattr(trainer.datamodule, "loss_bounds", None)
        if callable(bounds):
            for name, value in bounds().items():
                if value <= 0:  # a zero bound has no place on a log axis
                    continue
                loss_ax.axhline(value, color="grey", ls="--", lw=1)
                loss_ax.annotate(name, (0, value), fontsize=7, color="grey", va="bottom")
        acc_ax.set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
        loss_ax.set(xlabel="step", ylabel="loss", yscale="log")
        acc_ax.legend(fontsize=7)
        loss_ax.legend(fontsize=7)
        publish_figure(trainer, "grok/curves", fig)
