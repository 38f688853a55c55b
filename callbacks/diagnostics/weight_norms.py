"""L2 norms of the weights: per top-level layer of the net, per optimiser group, and in total.

Weight decay shrinking the weight norm after memorisation is the usual account of grokking's delay; these
curves show which layers shrink and when. Logged as `weights/norm/<layer>` (each direct child module of the
net, or a parameter the net holds itself), `weights/norm/group_<name>` (each optimiser group, by its `name`
or index) and `weights/norm/total` (every parameter once, tied weights included once); drawn as `weights/norm`.
"""
from __future__ import annotations

from typing import Iterable

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from callbacks.diagnostics.base import Diagnostic, new_figure, publish_figure


@torch.no_grad()
def l2_norm(params: Iterable[Tensor]) -> float:
    """sqrt(Σ w²) over all entries of all `params` (0 for none); half precision is summed in float32."""
    norms = [torch.linalg.vector_norm(p.detach().to(torch.promote_types(p.dtype, torch.float32))) for p in params]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def layer_norms(net: nn.Module) -> dict[str, float]:
    """{top-level name: norm}: each direct child with parameters, and each parameter registered on `net` itself."""
    norms = {name: l2_norm(child.parameters()) for name, child in net.named_children()
             if any(True for _ in child.parameters())}
    norms |= {name: l2_norm([p]) for name, p in net.named_parameters(recurse=False)}
    return norms


def group_norms(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {f"group_{group.get('name') or i}": l2_norm(group["params"])
            for i, group in enumerate(optimizer.param_groups)}


class WeightNorms(Diagnostic):
    """`weights/norm/*` every `every_n_steps` steps; figure `weights/norm` (layers and total | groups)."""

    def __init__(self, every_n_steps: int = 100, plot_every_n_steps: int | None = None, plot: bool = True):
        super().__init__(every_n_steps, plot_every_n_steps=plot_every_n_steps, plot=plot)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        net = pl_module.net
        norms = layer_norms(net)
        if trainer.optimizers:
            norms |= group_norms(trainer.optimizers[0])
        norms["total"] = l2_norm(net.parameters())
        metrics = {f"weights/norm/{name}": value for name, value in norms.items()}
        self.history.append({"step": trainer.global_step, **metrics})
        return metrics

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:
            return
        fig = new_figure(10, 3.8)
        layer_ax, group_ax = fig.subplots(1, 2)
        keys = sorted({k for h in self.history for k in h if k.startswith("weights/norm/")})
        for key in keys:
            name = key.removeprefix("weights/norm/")
            ax = group_ax if name.startswith("group_") else layer_ax
            points = [(h["step"], h[key]) for h in self.history if key in h]
            total = name == "total"
            ax.plot(*zip(*points), label=name, lw=2.0 if total else 1.2, color="k" if total else None)
        layer_ax.set(xlabel="step", ylabel="L2 norm", title="per layer")
        group_ax.set(xlabel="step", ylabel="L2 norm", title="per optimiser group")
        for ax in (layer_ax, group_ax):
            if ax.lines:
                ax.legend(fontsize=7)
        publish_figure(trainer, "weights/norm", fig)
