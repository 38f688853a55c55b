"""Grokfast: amplify the slow part of each parameter's gradient before the optimiser sees it.

Lee, Kang, Kim & Lee (2024), "Grokfast: Accelerated Grokking by Amplifying Slow Gradients", arXiv:2405.20233.
The sequence of gradients g_t of a parameter is treated as a signal in time: its fast-varying part drives
memorisation, its slow-varying part generalisation. A low-pass filter extracts the slow part and adds it back,
scaled by λ, so the optimiser (AdamW here) steps on

    ema (the paper's "Grokfast"):  h_t = α·h_{t-1} + (1-α)·g_t,           ĝ_t = g_t + λ·h_t
    ma  ("Grokfast-MA"):           Q = the last w raw gradients g_{t-w+1..t}, ĝ_t = g_t + λ·mean(Q)

Defaults are the paper's: ema α = 0.98, λ = 2.0; ma w = 100, λ = 5.0. As in the authors' reference code, the
MA filter leaves the gradient unchanged until the window holds w gradients (`warmup=True`), and the EMA
starts from the first gradient (h_0 = g_1, so ĝ_1 = (1+λ)·g_1; `ema_init="zero"` starts from h_0 = 0 instead).
The filter state is built from the gradients backward gives (clipped, when clipping is on); it never sees
its own output.

Where it runs, and gradient clipping: the reference code (ironjr/grokfast, main.py) filters between
`loss.backward()` and `optimizer.step()` and never clips. Lightning 2.6 calls the callbacks'
`on_before_optimizer_step` (where the filter runs) *before* it clips with `trainer.gradient_clip_val`, so a
norm clip would scale the amplified gradient back to the clip value and cancel most of the gain. This callback
therefore takes the trainer's clipping over at fit start (the trainer's value is set to None until fit ends) and
clips the raw gradient itself, with Lightning's own clipping, before filtering: the optimiser steps on
filter(clip(g)), and nothing acts between the filter and the step, as in the reference code.
Without a clip value (the paper's regime) nothing is clipped.

Under fp16 AMP the gradients are unscaled before this hook for a non-fused optimiser; a step with a non-finite
gradient (which the scaler will skip) leaves the filter state untouched. A fused optimiser unscales inside its
own step, after the filter, so that combination is refused at fit start. Gradient accumulation filters the
accumulated gradient, once per optimiser step.

Memory: ema keeps one copy of every parameter, ma keeps w copies (the window).

No host reads in a step: whether the gradients are finite is a device flag that selects, element by element,
between the filtered and the raw gradient and between the new and the old filter state; the MA window is a ring
written one row a step, with a running sum (`GradientWindow`), not the whole window copied and averaged.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import Tensor

from core.errors import ConfigError, require

FILTERS = ("ema", "ma")
EMA_INITS = ("first", "zero")
DEFAULT_LAMB = {"ema": 2.0, "ma": 5.0}


def ema_filter(grad: Tensor, avg: Tensor, alpha: float, lamb: float) -> tuple[Tensor, Tensor]:
    """One EMA step: (ĝ = g + λ·h, h) with h = α·avg + (1-α)·g. Returns new tensors; the inputs are untouched."""
    avg = alpha * avg + (1 - alpha) * grad
    return grad + lamb * avg, avg


class GradientEMA:
    """One parameter's EMA h and how many gradients it has taken in, as a device count: a step is then skipped by
    a device flag (`keep`), and `from_first` starts h at the first gradient kept (the reference code's h_0 = g_1)
    without a host read."""

    def __init__(self, like: Tensor, from_first: bool):
        self.avg, self.from_first = torch.zeros_like(like), from_first
        self.count = torch.zeros((), dtype=torch.long, device=like.device)

    def step(self, grad: Tensor, alpha: float, lamb: float, keep: Tensor | None = None) -> Tensor:
        """ĝ = g + λ·h after h moves by one EMA step; `keep` False leaves h as it was. `grad` is untouched."""
        previous = torch.where(self.count > 0, self.avg, grad) if self.from_first else self.avg
        filtered, avg = ema_filter(grad, previous, alpha, lamb)
        self.avg = avg if keep is None else torch.where(keep, avg, self.avg)
        self.count += 1 if keep is None else keep.long()
        return filtered

    def to(self, device: torch.device) -> "GradientEMA":
        self.avg, self.count = self.avg.to(device), self.count.to(device)
        return self

    @classmethod
    def restore(cls, avg: Tensor, from_first: bool) -> "GradientEMA":
        ema = cls(avg, from_first)
        ema.avg = avg.clone()
        ema.count.fill_(1)
        return ema


class GradientWindow:
    """The last `size` raw gradients of one parameter, the MA filter's window, as a ring: a step writes one row in
    place and moves a running sum by (new - oldest), where copying and averaging the whole window would read w
    copies of the parameter a step. The sum is recomputed from the rows every `size` pushes, so rounding cannot
    build up over a long run: the mean equals the window's to float rounding. The count of gradients held is a
    device tensor, so a push can be made conditional on a device flag (`keep`) without a host read."""

    def __init__(self, like: Tensor, size: int):
        self.size = size
        self.rows = like.new_zeros((size, *like.shape))
        self.total = torch.zeros_like(like)
        self.count = torch.zeros((), dtype=torch.long, device=like.device)  # gradients pushed (and kept)
        self.pushes = 0  # pushes since the sum was recomputed from the rows (a host count: no read needed)

    def push(self, grad: Tensor, keep: Tensor | None = None) -> None:
        """Write `grad` over the oldest row (or into the next empty one); with `keep` (0-dim bool) False, nothing
        changes."""
        slot = (self.count % self.size).reshape(1)
        oldest = self.rows.index_select(0, slot)[0]
        new = grad if keep is None else torch.where(keep, grad, oldest)
        self.rows.index_copy_(0, slot, new[None])
        self.pushes += 1
        if self.pushes == self.size:
            self.total, self.pushes = self.rows.sum(0), 0
        else:
            self.total.add_(new - oldest)
        self.count += 1 if keep is None else keep.long()

    def mean(self) -> Tensor:
        """The mean of the gradients held (of none: 0)."""
        return self.total / self.count.clamp(1, self.size)

    def full(self) -> Tensor:
        return self.count >= self.size

    def to(self, device: torch.device) -> "GradientWindow":
        self.rows, self.total, self.count = (t.to(device) for t in (self.rows, self.total, self.count))
        return self

    def ordered(self) -> Tensor:
        """The gradients held, oldest first, (min(count, size), *shape): one host read (checkpoints only)."""
        count = int(self.count)
        return self.rows[:count].clone() if count < self.size else self.rows.roll(-(count % self.size), 0).clone()

    def running(self) -> dict[str, Any]:
        """What `ordered()` leaves out, so that a restored window continues bit for bit."""
        return {"size": self.size, "count": int(self.count), "total": self.total.clone(), "pushes": self.pushes}

    @classmethod
    def restore(cls, ordered: Tensor, size: int, running: dict[str, Any] | None = None) -> "GradientWindow":
        """The window of `ordered` (oldest first, as `ordered()` gives; also the earlier code's checkpoints);
        with the `running()` record of a window of the same size, exactly as it was, else its sum recomputed."""
        ordered = ordered[-size:]
        window = cls(ordered.new_zeros(ordered.shape[1:]), size)
        exact = running is not None and running["size"] == size
        count = running["count"] if exact else len(ordered)
        if count < size:
            window.rows[:count] = ordered
        else:
            window.rows.copy_(ordered.roll(count % size, 0))
        window.count.fill_(count)
        if exact:
            window.total, window.pushes = running["total"].clone(), running["pushes"]
        else:
            window.total = window.rows.sum(0)
        return window


def ma_filter(grad: Tensor, window: GradientWindow, lamb: float, warmup: bool = True,
              keep: Tensor | None = None) -> Tensor:
    """One moving-average step: push g into the window, then ĝ = g + λ·mean(window), or ĝ = g while the window
    is not yet full and `warmup` is on. `keep` (0-dim bool): False leaves the window as it was. `grad` is
    untouched."""
    window.push(grad, keep)
    filtered = grad + lamb * window.mean()
    return torch.where(window.full(), filtered, grad) if warmup else filtered


class Grokfast(Callback):
    """Filters every trainable parameter's gradient between backward and the optimiser step (see module doc).

    filter: "ema" or "ma". alpha: EMA momentum in [0, 1). lamb: λ, the slow component's gain (null = the
    paper's default for the filter: 2.0 for ema, 5.0 for ma). window_size: w for ma. warmup: ma leaves the
    gradient alone until the window is full. ema_init: "first" (h_0 = first gradient, the reference code) or
    "zero" (h_0 = 0). l2: adds l2·θ to the filtered gradient, which is what the reference runs' optimiser,
    torch.optim.Adam(weight_decay=l2), does first thing in its step (their ema runs use 0.005, ma 0.01); with
    optimizer.weight_decay=0 the framework's AdamW then steps as their Adam. (AdamW's own weight decay is
    decoupled: a different, far weaker decay at these values.) The filter state is kept per parameter name
    and saved in checkpoints. The trainer's gradient clipping, if any, is applied by this callback to the raw
    gradient, before the filter.
    """

    def __init__(
        self,
        filter: str = "ema",
        alpha: float = 0.98,
        lamb: float | None = None,
        window_size: int = 100,
        warmup: bool = True,
        ema_init: str = "first",
        l2: float = 0.0,
    ):
        require(filter in FILTERS, "filter", filter, f"one of {', '.join(FILTERS)}")
        require(isinstance(alpha, (int, float)) and 0 <= alpha < 1, "alpha", alpha, "a number in [0, 1)")
        lamb = DEFAULT_LAMB[filter] if lamb is None else lamb
        require(isinstance(lamb, (int, float)) and not isinstance(lamb, bool) and 0 <= lamb < float("inf"),
                "lamb", lamb, "a finite number >= 0 (null = 2.0 for ema, 5.0 for ma)")
        require(isinstance(window_size, int) and not isinstance(window_size, bool) and window_size >= 1,
                "window_size", window_size, "an integer >= 1")
        require(isinstance(warmup, bool), "warmup", warmup, "true or false")
        require(ema_init in EMA_INITS, "ema_init", ema_init, f"one of {', '.join(EMA_INITS)}")
        require(isinstance(l2, (int, float)) and not isinstance(l2, bool) and 0 <= l2 < float("inf"), "l2", l2,
                "a finite number >= 0")
        self.filter, self.alpha, self.lamb = filter, float(alpha), float(lamb)
        self.window_size, self.warmup, self.ema_init, self.l2 = window_size, warmup, ema_init, float(l2)
        self.state: dict[str, GradientEMA | GradientWindow] = {}  # parameter name -> its filter state
        self.clip: tuple[float, GradClipAlgorithmType] | None = None  # taken from the trainer for the fit

    def filter_gradient(self, name: str, grad: Tensor, keep: Tensor | None = None) -> Tensor:
        """ĝ for parameter `name`, advancing its filter state by one step (unless `keep`, a 0-dim bool, is False)."""
        state = self.state.get(name)
        if state is None:
            state = self.state[name] = (GradientWindow(grad, self.window_size) if self.filter == "ma"
                                        else GradientEMA(grad, self.ema_init == "first"))
        elif state.count.device != grad.device:  # restored from a checkpoint on the host: moved once
            state.to(grad.device)
        if self.filter == "ema":
            return state.step(grad, self.alpha, self.lamb, keep)
        return ma_filter(grad, state, self.lamb, self.warmup, keep)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Take the trainer's clipping over, so that it acts before the filter (after configure_optimizers,
        which may pick a clip-compatible optimiser from the trainer's value)."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and any(getattr(o, "_step_supports_amp_scaling", False) for o in trainer.optimizers):
            raise ConfigError("optimizer.fused", True, "false with Grokfast under 16-mixed precision (a fused "
                              "optimiser unscales the gradients inside its step, after the filter)")
        if trainer.gradient_clip_val:
            self.clip = (trainer.gradient_clip_val, GradClipAlgorithmType(trainer.gradient_clip_algorithm or "norm"))
            trainer.gradient_clip_val = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.clip is not None:  # hand the clipping back
            trainer.gradient_clip_val, self.clip = self.clip[0], None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.clip is not None:  # the module's own clipping (a TaskModule clips a fused optimiser itself)
            pl_module.configure_gradient_clipping(optimizer, *self.clip)
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}  # this optimiser's only
        named = [(name, p) for name, p in pl_module.named_parameters() if id(p) in stepped and p.grad is not None]
        if not named:
            return
        # AMP skips a step with a non-finite gradient: the filter state then stays as it was. A device flag, so
        # the host never waits for the GPU to know it.
        finite = torch.stack([torch.isfinite(p.grad).all() for _, p in named]).all()
        with torch.no_grad():
            for name, p in named:
                filtered = self.filter_gradient(name, p.grad, finite)
                if self.l2:
                    filtered = filtered + self.l2 * p
                p.grad.copy_(torch.where(finite, filtered, p.grad))

    def state_dict(self) -> dict[str, Any]:
        """The EMA h, or the MA window oldest first, of every parameter that has taken in a gradient (one host
        read each: checkpoints only); for MA also what restores the ring exactly."""
        held = {name: state for name, state in self.state.items() if int(state.count) > 0}
        if self.filter == "ema":
            return {"filter": self.filter, "state": {name: state.avg.detach().clone() for name, state in held.items()}}
        return {"filter": self.filter, "state": {name: state.ordered() for name, state in held.items()},
                "running": {name: state.running() for name, state in held.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        require(state_dict["filter"] == self.filter, "filter", self.filter,
                f"the filter the checkpoint was trained with ({state_dict['filter']})")
        if self.filter == "ema":
            self.state = {name: GradientEMA.restore(avg, self.ema_init == "first")
                          for name, avg in state_dict["state"].items()}
        else:
            running = state_dict.get("running", {})
            self.state = {name: GradientWindow.restore(window, self.window_size, running.get(name))
                          for name, window in state_dict["state"].items()}
