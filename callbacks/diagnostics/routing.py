"""Routing diagnostics of routed nets (the routed-transformer and least-action studies): which head handles which input.

At its cadence the callback evaluates the net once on a probe and reads the routing weights where the answer is
read: for token nets at the answer positions (`Batch.answer_mask`: the last position of the tokens format,
position 4 of the sequence format's targets, every answer digit of a digit task), for one-hot nets per example.
On modular arithmetic the probe is every equation, and the first operation's (a, b) grid gives per-(a, b) views:
- `routing/head_map`: the argmax head for each (a, b), a p x p image per layer (does routing specialise by input?);
- `routing/usage_by_operation`: mean routing weight of each head per operation (multi-op data).
On any task (the probe is then `examples("train", probe_size)`) it draws
- `routing/entropy`: eval-mode routing entropy per layer over time,
and logs `routing/decisiveness/layer_<i>` (mean of the largest weight; 1/N uniform, 1 one-hot) and
`routing/eval_entropy/layer_<i>` over the probe's answer positions (the first operation's grid on modular data;
the module logs the training batch's values). Nets without routing are skipped.
"""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from matplotlib.colors import ListedColormap

from callbacks.diagnostics.base import Diagnostic, eval_forward, new_figure, publish_figure
from core.errors import require
from datamodules.task import ModularStructure, at_answers, modular_structure
from regularizers.routing import entropy


class RoutingDiagnostics(Diagnostic):
    """probe_size: how many training examples probe a task without modular structure (modular: every equation)."""

    name = "routing"

    def __init__(self, every_n_steps: int = 500, plot_every_n_steps: int | None = 2000, probe_size: int = 1024):
        super().__init__(every_n_steps, plot_every_n_steps=plot_every_n_steps)
        require(isinstance(probe_size, int) and probe_size >= 1, "probe_size", probe_size, "an integer >= 1")
        self.probe_size = probe_size
        self.structure: ModularStructure | None = None
        self.head_maps: list[np.ndarray] = []  # latest argmax-head map per layer, (p, p)
        self.usage_by_op: list[np.ndarray] = []  # latest (ops, heads) mean weights per layer
        self.n_heads = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.structure = modular_structure(trainer.datamodule)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        structure = self.structure
        # modular: one forward over every equation, whose first operation's rows are the grid
        probe = structure.all if structure else trainer.datamodule.examples("train", self.probe_size)
        routing = eval_forward(pl_module, probe.inputs.to(pl_module.device)).routing
        if not routing:
            self.stand_aside(trainer, "the net has no routers: nothing to read")
            return {}
        weights = [at_answers(w, probe.answer_mask).float().cpu() for w in routing]  # (answers, heads) per layer
        self.n_heads = weights[0].shape[-1]
        layers = weights
        if structure:  # one answer per equation: rows are equations
            groups = probe.group.cpu()
            layers = [w[groups == 0] for w in weights]  # = structure.grid, in a-major order
            p = structure.p
            square = len(layers[0]) == p * p
            self.head_maps = [w.argmax(-1).reshape(p, p).numpy() for w in layers] if square else []
            n_ops = len(structure.operations)
            if n_ops > 1:
                self.usage_by_op = [torch.stack([w[groups == g].mean(0) for g in range(n_ops)]).numpy()
                                    for w in weights]
        metrics, entropies = {}, []
        for i, w in enumerate(layers):
            metrics[f"routing/decisiveness/layer_{i}"] = w.max(-1).values.mean().item()
            entropies.append(entropy(w).mean().item())
            metrics[f"routing/eval_entropy/layer_{i}"] = entropies[-1]
        self.history.append({"step": trainer.global_step, "entropy": entropies})
        return metrics

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:
            return
        if self.head_maps:
            n, n_heads = len(self.head_maps), self.n_heads
            fig = new_figure(3.2 * n + 1, 3.2)
            axes = fig.subplots(1, n, squeeze=False)[0]
            colours = ListedColormap([f"C{j % 10}" for j in range(n_heads)])  # one colour per head
            for i, (ax, head_map) in enumerate(zip(axes, self.head_maps)):
                image = ax.imshow(head_map, cmap=colours, vmin=-0.5, vmax=n_heads - 0.5, interpolation="nearest",
                                  origin="lower")
                ax.set(title=f"layer {i}: argmax head", xlabel="b", ylabel="a")
            fig.colorbar(image, ax=list(axes), label="head", ticks=range(n_heads))
            publish_figure(trainer, "routing/head_map", fig)
        if self.usage_by_op:
            ops = list(self.structure.operations)
            n = len(self.usage_by_op)
            fig = new_figure(3.2 * n + 1, 0.6 * len(ops) + 1.8)
            axes = fig.subplots(1, n, squeeze=False)[0]
            for i, (ax, usage) in enumerate(zip(axes, self.usage_by_op)):
                image = ax.imshow(usage, vmin=0, vmax=1, cmap="magma", aspect="auto")
                ax.set(title=f"layer {i}", xlabel="head", yticks=range(len(ops)), yticklabels=ops)
            fig.colorbar(image, ax=list(axes), label="mean routing weight")
            publish_figure(trainer, "routing/usage_by_operation", fig)
        fig = new_figure(6, 3.5)
        ax = fig.add_subplot()
        steps = [h["step"] for h in self.history]
        for i, series in enumerate(zip(*(h["entropy"] for h in self.history))):
            ax.plot(steps, series, label=f"layer {i}")
        ax.set(xlabel="step", ylabel="routing entropy (nats)", ylim=(0, None), title="eval routing entropy")
        ax.legend()
        publish_figure(trainer, "routing/entropy", fig)
