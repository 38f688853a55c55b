"""Routing diagnostics of routed nets (seeds 000, 001): which head handles which input.

At its cadence the callback evaluates the net once on the whole dataset; the grid of the first operation
(`datamodule.grid()`) gives the per-(a, b) views. It draws per layer
- `routing/head_map`: the argmax head for each (a, b), a p x p image per layer (does routing specialise by input?);
- `routing/usage_by_operation`: mean routing weight of each head per operation (multi-op data);
- `routing/entropy`: eval-mode routing entropy per layer over time.
Logged scalars: `routing/decisiveness/layer_<i>` (mean of the largest weight; 1/N uniform, 1 one-hot) and
`routing/eval_entropy/layer_<i>` on the whole grid (the module logs the training batch's values). For token nets
the weights are those of the last input position, where the answer is read. Nets without routing are skipped.
"""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from torch import Tensor

from callbacks.diagnostic import Diagnostic, eval_forward, new_figure, publish_figure
from lightning_modules.routing_regularizers import entropy


def per_example(weights: Tensor) -> Tensor:
    """(N, [T,] heads) -> (N, heads): token nets are read at their last position."""
    return weights[:, -1] if weights.ndim == 3 else weights


class RoutingDiagnostics(Diagnostic):
    def __init__(self, every_n_steps: int = 500, plot_every_n_steps: int | None = 2000):
        super().__init__(every_n_steps, plot_every_n_steps=plot_every_n_steps)
        self.head_maps: list[np.ndarray] = []  # latest argmax-head map per layer, (p, p)
        self.usage_by_op: list[np.ndarray] = []  # latest (ops, heads) mean weights per layer
        self.n_heads = 0

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        data = trainer.datamodule
        everything = data.all  # one forward over every equation; the first operation's rows are the grid
        routing = eval_forward(pl_module, everything.inputs.to(pl_module.device)).routing
        if not routing:
            return {}
        weights = [per_example(w).float().cpu() for w in routing]
        groups = everything.group.cpu()
        layers = [w[groups == 0] for w in weights]  # = data.grid(), in a-major order
        self.n_heads = layers[0].shape[-1]
        p = data.p
        square = len(layers[0]) == p * p
        self.head_maps = [w.argmax(-1).reshape(p, p).numpy() for w in layers] if square else []
        metrics, entropies = {}, []
        for i, w in enumerate(layers):
            metrics[f"routing/decisiveness/layer_{i}"] = w.max(-1).values.mean().item()
            entropies.append(entropy(w).mean().item())
            metrics[f"routing/eval_entropy/layer_{i}"] = entropies[-1]
        if len(data.operations) > 1:
            self.usage_by_op = [torch.stack([w[groups == g].mean(0) for g in range(len(data.operations))]).numpy()
                                for w in weights]
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
            ops = trainer.datamodule.operations
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
