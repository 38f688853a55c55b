"""Attention maps of transformers on a fixed set of inputs, as images (the MoE-expressivity study asks what
attention learns).

At its cadence the callback runs the net with `return_attention=True` on the same `n_examples` validation inputs
and draws `attention/maps`: one row per layer, one panel per head, the (query x key) attention averaged over the
examples, with the input tokens of the first example as tick labels. Nets without attention are skipped. Works on
any task with token inputs: the probe is `examples("val", n_examples)`.
"""
from __future__ import annotations

import inspect

import lightning.pytorch as pl
import torch

from callbacks.diagnostics.base import Diagnostic, eval_forward, new_figure, publish_figure


class AttentionMaps(Diagnostic):
    name = "attention"

    def __init__(self, every_n_steps: int = 2000, n_examples: int = 64):
        super().__init__(every_n_steps, plot_every_n_steps=every_n_steps)
        self.n_examples = n_examples
        self.maps: list[torch.Tensor] = []  # per layer (heads, T, T), latest
        self.tokens: list[int] = []

    def requirements(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        if "val" not in trainer.datamodule.split_names():
            return "needs a validation split to draw its probe from; this task has none"
        if "return_attention" not in inspect.signature(pl_module.net.forward).parameters:
            return "the net has no attention to draw"
        return None

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        inputs = trainer.datamodule.examples("val", self.n_examples).inputs.to(pl_module.device)
        attention = eval_forward(pl_module, inputs, return_attention=True).attention
        self.maps = [a.float().mean(0).cpu() for a in attention]
        self.tokens = inputs[0].tolist()
        self.history.append({"step": trainer.global_step})
        return {}

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.maps:
            return
        layers, heads = len(self.maps), self.maps[0].shape[0]
        fig = new_figure(2.4 * heads + 1, 2.4 * layers + 0.5)
        axes = fig.subplots(layers, heads, squeeze=False)
        labels = [str(t) for t in self.tokens]
        for i, layer in enumerate(self.maps):
            for h in range(heads):
                ax = axes[i][h]
                image = ax.imshow(layer[h].numpy(), vmin=0, vmax=1, cmap="Blues")
                ax.set_title(f"layer {i} head {h}", fontsize=8)
                ax.set_xticks(range(len(labels)), labels, fontsize=6)
                ax.set_yticks(range(len(labels)), labels, fontsize=6)
        fig.colorbar(image, ax=axes.ravel().tolist(), label="attention (mean over examples)")
        fig.suptitle(f"step {trainer.global_step}: query (rows) attends to key (columns)")
        publish_figure(trainer, "attention/maps", fig)
