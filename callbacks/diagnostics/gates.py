"""Gate diagnostics of gated-depth nets (the least-action study): how each layer's gate moves, and depth against
accuracy; with input-dependent gates (`model.gate_scope=input`), the depth each input uses.

The module logs the scalars (`gates/layer_<i>`, `gates/effective_depth`, `gates/entropy`) on logging steps; this
callback keeps their eval-mode values at its cadence (the mean over the probe) and draws the two figures the seed
reads: `gates/evolution` (x: step, y: layer, colour: gate value) and `gates/depth_vs_accuracy` (effective depth
overlaid on val accuracy). Nets without gates are skipped. The probe is every equation on modular arithmetic (the
task's Z_p grid), else `examples("train", probe_size)`.

Where each input has its own gates (`per_input_measures`), it also logs, over the probe:
- `gates/depth_per_input/{mean,std,min,max}`: the effective depth sum_l g_l(x) of each input x;
- `gates/depth_per_input/<op>`: its mean per operation (multi-op data: does mul take more layers than add?);
- `gates/off_share/layer_<i>`: the share of inputs whose gate at layer i is off (below `off_below`, ~0);
- `gates/early_exit_share` and `gates/exit_layer/mean`: an input exits after its last layer that is not off (the
  layers after it are skipped for it: the seed's "early exit"); the share of inputs that exit before the last layer,
  and the mean number of layers before their exit;
and draws `gates/depth_per_input`: the depth per input by operation and, on the first operation's (a, b) grid, per
(a, b).
"""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from callbacks.diagnostics.base import Diagnostic, eval_forward, new_figure, publish_figure
from core.errors import require
from datamodules.task import modular_structure


def per_input_measures(gates: Tensor, group: Tensor, group_names: tuple[str, ...], off_below: float) -> dict[str, float]:
    """The depth-per-input scalars (module docstring) of per-input gates (N, L) with each input's group (N,)."""
    depth = gates.sum(-1)
    off = gates < off_below
    on = ~off
    # exit layer: 1 + the index of the last layer that is not off (0 when every layer is off)
    last_on = torch.where(on.any(-1), gates.shape[-1] - on.flip(-1).float().argmax(-1), torch.zeros_like(depth).long())
    metrics = {"gates/depth_per_input/mean": depth.mean().item(), "gates/depth_per_input/std": depth.std(0).item()
               if len(depth) > 1 else 0.0, "gates/depth_per_input/min": depth.min().item(),
               "gates/depth_per_input/max": depth.max().item()}
    if len(group_names) > 1:
        metrics |= {f"gates/depth_per_input/{name}": depth[group == index].mean().item()
                    for index, name in enumerate(group_names) if (group == index).any()}
    metrics |= {f"gates/off_share/layer_{i}": share for i, share in enumerate(off.float().mean(0).tolist())}
    metrics["gates/early_exit_share"] = (last_on < gates.shape[-1]).float().mean().item()
    metrics["gates/exit_layer/mean"] = last_on.float().mean().item()
    return metrics


class GateDiagnostics(Diagnostic):
    """probe_size: the training examples probed where the task has no Z_p grid; off_below: a gate below this is off
    (a layer the input skips)."""

    name = "gates"

    def __init__(self, every_n_steps: int = 100, plot_every_n_steps: int = 1000, probe_size: int = 256,
                 off_below: float = 0.05):
        super().__init__(every_n_steps, plot_every_n_steps=plot_every_n_steps)
        require(isinstance(probe_size, int) and probe_size >= 1, "probe_size", probe_size, "an integer >= 1")
        require(isinstance(off_below, (int, float)) and 0 < off_below < 1, "off_below", off_below,
                "a number in (0, 1), e.g. 0.05")
        self.probe_size, self.off_below = probe_size, off_below
        self.depths: dict[str, np.ndarray] = {}  # the latest depth per input, per operation
        self.depth_map: np.ndarray | None = None  # the latest depth per (a, b) of the first operation

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        structure = modular_structure(trainer.datamodule)
        probe = structure.all if structure else trainer.datamodule.examples("train", self.probe_size)
        gates = eval_forward(pl_module, probe.inputs.to(pl_module.device)).gates
        if gates is None:
            self.stand_aside(trainer, "the net has no gates: nothing to read")
            return {}
        gates = gates.float().cpu()
        values = gates.reshape(-1, gates.shape[-1]).mean(0)
        val_acc = trainer.callback_metrics.get("val/acc")
        self.history.append({"step": trainer.global_step, "gates": values.tolist(),
                             "val_acc": None if val_acc is None else float(val_acc)})
        if gates.ndim == 1:
            return {}
        group, names = probe.group.cpu(), tuple(trainer.datamodule.spec.group_names) or ("all",)
        depth = gates.sum(-1).numpy()
        self.depths = {name: depth[(group == index).numpy()] for index, name in enumerate(names)}
        p = structure.p if structure else 0
        first = depth[(group == 0).numpy()]
        self.depth_map = first.reshape(p, p) if structure and len(first) == p * p else None
        return per_input_measures(gates, group, names, self.off_below)

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
        if self.depths:
            self.plot_depth_per_input(trainer, gates.shape[1])

    def plot_depth_per_input(self, trainer: pl.Trainer, n_layers: int) -> None:
        """The latest depth per input: a histogram per operation and, on a Z_p grid, the map over (a, b)."""
        fig = new_figure(9 if self.depth_map is not None else 5, 3.5)
        axes = fig.subplots(1, 2 if self.depth_map is not None else 1, squeeze=False)[0]
        bins = np.linspace(0, n_layers, 4 * n_layers + 1)
        for name, depth in self.depths.items():
            axes[0].hist(depth, bins=bins, alpha=0.6, label=f"{name} (mean {depth.mean():.2f})")
        axes[0].set(xlabel="effective depth of an input (sum of its gates)", ylabel="inputs",
                    title="depth used per input")
        axes[0].legend(fontsize=7)
        if self.depth_map is not None:
            image = axes[1].imshow(self.depth_map, vmin=0, vmax=n_layers, cmap="viridis", origin="lower",
                                   interpolation="nearest")
            axes[1].set(xlabel="b", ylabel="a", title=f"depth per (a, b), {next(iter(self.depths))}")
            fig.colorbar(image, ax=axes[1], label="effective depth")
        publish_figure(trainer, "gates/depth_per_input", fig)
