"""How the optimiser moves the weights, per parameter group: update size, Adam's per-weight step sizes, momentum.

Grokking with AdamW is a slow drift under weight decay after memorisation; these numbers show whether the
updates shrink or grow relative to the weights and how Adam's second moment rescales the learning rate.
Logged as `optim/<group>/<what>` with the group's `name` (decay, no_decay, ...; `group_<i>` when unnamed):

- update_ratio: ||Δw|| / ||w|| over the group, Δw the whole step (gradient part and weight decay), w before it;
- step_size_mean / step_size_median / step_size_max: Adam's effective per-weight step lr / (sqrt(v̂) + eps),
  v̂ = exp_avg_sq / (1 - β₂ᵗ) with t the step count in the optimiser state, lr the one the step used;
- exp_avg_norm: ||m||, the L2 norm of the first moment (not bias-corrected).

Weights are copied only before the steps that end on the cadence, so other steps cost nothing.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

from callbacks.diagnostics.base import Diagnostic, new_figure, publish_figure

STEP_SIZE_STATS = ("mean", "median", "max")


def group_name(group: Mapping[str, Any], index: int) -> str:
    return str(group.get("name") or f"group_{index}")


def at_least_float32(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def flat_norm(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm of all entries of all tensors (half-precision ones summed in float32)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(at_least_float32(t)) for t in tensors]))


def group_stats(group: Mapping[str, Any], state: Mapping[Tensor, Mapping[str, Any]],
                before: Sequence[Tensor] | None = None, lr: float | None = None) -> dict[str, float]:
    """The statistics of one optimiser group after a step. `before`: the group's weights before the step (for
    the update ratio); `lr`: the learning rate that step used (default: the group's current one). Adam-only
    statistics are left out for parameters without Adam state (other optimisers, parameters never stepped)."""
    params = list(group["params"])
    stats: dict[str, float] = {}
    if before is not None:
        delta = [p.detach() - b for p, b in zip(params, before)]
        stats["update_ratio"] = float(flat_norm(delta) / flat_norm(before).clamp_min(1e-30))
    adam = [state[p] for p in params if "exp_avg_sq" in state.get(p, {})]
    if adam:
        lr = group["lr"] if lr is None else lr
        beta2, eps = group["betas"][1], group["eps"]
        step_sizes = []
        for s in adam:
            t = float(s["step"])
            v_hat = at_least_float32(s["exp_avg_sq"]) / (1 - beta2**t)
            step_sizes.append((lr / (v_hat.sqrt() + eps)).flatten())
        sizes = torch.cat(step_sizes)
        stats |= {"step_size_mean": float(sizes.mean()), "step_size_median": float(sizes.median()),
                  "step_size_max": float(sizes.max()), "exp_avg_norm": float(flat_norm([s["exp_avg"] for s in adam]))}
    return stats


class OptimizerStats(Diagnostic):
    """Per-group optimiser statistics every `every_n_steps` steps, measured right after that step; draws
    `optim/history` (update ratio and mean step size per group, log y)."""

    def __init__(self, every_n_steps: int = 100, plot_every_n_steps: int | None = None, plot: bool = True):
        super().__init__(every_n_steps, plot_every_n_steps=plot_every_n_steps, plot=plot)
        self._snapshot: dict[str, Any] | None = None  # {"step": steps done after it, "weights", "lrs"}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        step_after = trainer.global_step + 1
        if step_after % self.every_n_steps:
            return
        # the scheduler moves lr before on_train_batch_end, so the lr this step uses is read now
        self._snapshot = {
            "step": step_after,
            "weights": [[p.detach().clone() for p in g["params"]] for g in optimizer.param_groups],
            "lrs": [g["lr"] for g in optimizer.param_groups],
        }

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None or snapshot["step"] != trainer.global_step or not trainer.optimizers:
            return {}  # no step was watched (initialisation, the end of a run off the cadence, a skipped step)
        optimizer = trainer.optimizers[0]
        metrics: dict[str, float] = {}
        for i, group in enumerate(optimizer.param_groups):
            stats = group_stats(group, optimizer.state, snapshot["weights"][i], snapshot["lrs"][i])
            metrics |= {f"optim/{group_name(group, i)}/{k}": v for k, v in stats.items()}
        self.history.append({"step": trainer.global_step, **metrics})
        return metrics

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:
            return
        fig = new_figure(10, 3.8)
        ratio_ax, size_ax = fig.subplots(1, 2)
        names = sorted({k.split("/")[1] for h in self.history for k in h if k.startswith("optim/")})
        for colour, name in enumerate(names):
            for ax, what, style in ((ratio_ax, "update_ratio", "-"), (size_ax, "step_size_mean", "-"),
                                    (size_ax, "step_size_median", "--")):
                key = f"optim/{name}/{what}"
                points = [(h["step"], h[key]) for h in self.history if key in h]
                if points:
                    ax.plot(*zip(*points), color=f"C{colour}", ls=style, label=f"{name} {what.split('_')[-1]}"
                            if ax is size_ax else name)
        ratio_ax.set(xlabel="step", ylabel="||Δw|| / ||w||", yscale="log", title="update ratio")
        size_ax.set(xlabel="step", ylabel="lr / (sqrt(v̂) + eps)", yscale="log", title="Adam step size")
        for ax in (ratio_ax, size_ax):
            if ax.lines:
                ax.legend(fontsize=7)
        publish_figure(trainer, "optim/history", fig)
