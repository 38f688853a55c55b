"""Gate diagnostics of gated-depth nets (the least-action study): how each layer's gate moves, and depth against
accuracy.

The module logs the scalars (`gates/layer_<i>`, `gates/effective_depth`, `gates/entropy`) on logging steps; this
callback keeps their eval-mode values at its cadence and draws the two figures the seed reads:
`gates/evolution` (x: step, y: layer, colour: gate value) and `gates/depth_vs_accuracy` (effective depth overlaid on
val accuracy). Nets without gates are skipped. Works on any task: the probe is `examples("train", probe_size)`.
"""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np

from callbacks.diagnostics.base import Diagnostic, eval_forward, new_figure, publish_figure


class GateDiagnostics(Diagnostic):
    name = "gates"

    def __init__(self, every_n_steps: int = 100, plot_every_n_steps: int = 1000, probe_size: int = 256):
        super().__init__(every_n_steps, plot_every_n_steps=plot_every_n_steps)
        self.probe_size = probe_size

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        inputs = trainer.datamodule.examples("train", self.probe_size).inputs
        gates = eval_forward(pl_module, inputs.to(pl_module.device)).gates
        if gates is None:
            self.stand_aside(trainer, "the net has no gates: nothing to read")
            return {}
        values = gates.reshape(-1, gates.shape[-1]).mean(0).float().cpu()
        val_acc = trainer.callback_metrics.get("val/acc")
        self.history.append({"step": trainer.global_step, "gates": values.tolist(),
                             "val_acc": None if val_acc is None else float(val_acc)})
        return {}

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:
            return
        steps = np.array([h["step"] for h in self.history])
        gates = np.array([h["gates"] for h in self.history])  # (time, layers)
        fig = new_figure(7, 3.5)
        ax = fig.add_subplot()
        first = steps[0] - (steps[1] - steps[0] if len(steps) > 1 else 1)
        edges = np.append(first, steps)  # each cell ends at the step its values were measured
        mesh = ax.pcolormesh(edges, np.arange(gates.shape[1] + 1), gates.T, vmin=0, vmax=1, cmap="viridis")
        fig.colorbar(mesh, ax=ax, label="gate value")
        ax.set(xlabel="step", ylabel="layer", title="gate evolution")
        publish_figure(trainer, "gates/evolution", fig)

        fig = new_figure(7, 3.5)
        ax = fig.add_subplot()
        ax.plot(steps, gates.sum(1), color="C0", label="effective depth (sum of gates)")
        ax.plot(steps, (gates > 0.5).sum(1), color="C0", ls="--", label="layers with gate > 0.5")
        ax.set(xlabel="step", ylabel="layers", ylim=(0, gates.shape[1] + 0.5))
        acc = [(h["step"], h["val_acc"]) for h in self.history if h["val_acc"] is not None]
        if acc:
            twin = ax.twinx()
            twin.plot(*zip(*acc), color="C1", label="val acc")
            twin.set(ylabel="val accuracy", ylim=(0, 1.02))
            twin.legend(loc="lower right")
        ax.legend(loc="upper right")
        publish_figure(trainer, "gates/depth_vs_accuracy", fig)
