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
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import Tensor

from runtime.errors import ConfigError, require

FILTERS = ("ema", "ma")
EMA_INITS = ("first", "zero")
DEFAULT_LAMB = {"ema": 2.0, "ma": 5.0}


def ema_filter(grad: Tensor, avg: Tensor, alpha: float, lamb: float) -> tuple[Tensor, Tensor]:
    """One EMA step: (ĝ = g + λ·h, h) with h = α·avg + (1-α)·g. Returns new tensors; the inputs are untouched."""
    avg = alpha * avg + (1 - alpha) * grad
    return grad + lamb * avg, avg


def ma_filter(grad: Tensor, window: Tensor, window_size: int, lamb: float, warmup: bool = True
              ) -> tuple[Tensor, Tensor]:
    """One moving-average step: push g into the window (k, *shape), oldest first, keeping the last
    `window_size`; return (ĝ, window) with ĝ = g + λ·mean(window), or ĝ = g while the window is not yet full and
    `warmup` is on. Returns new tensors; the inputs are untouched."""
    window = torch.cat([window, grad[None]])[-window_size:]  # (min(k+1, w), *shape)
    if warmup and len(window) < window_size:
        return grad.clone(), window
    return grad + lamb * window.mean(dim=0), window


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
        self.state: dict[str, Tensor] = {}  # parameter name -> EMA h (shape of the parameter) or MA window (k, *shape)
        self.clip: tuple[float, GradClipAlgorithmType] | None = None  # taken from the trainer for the fit

    def _initial_state(self, grad: Tensor) -> Tensor:
        if self.filter == "ma":
            return grad.new_empty((0, *grad.shape))
        return grad.clone() if self.ema_init == "first" else torch.zeros_like(grad)

    def filter_gradient(self, name: str, grad: Tensor) -> Tensor:
        """ĝ for parameter `name`, advancing its filter state by one step."""
        state = self.state.get(name)
        state = self._initial_state(grad) if state is None else state.to(grad)
        if self.filter == "ema":
            filtered, self.state[name] = ema_filter(grad, state, self.alpha, self.lamb)
        else:
            filtered, self.state[name] = ma_filter(grad, state, self.window_size, self.lamb, self.warmup)
        return filtered

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
        if self.clip is not None:
            trainer.precision_plugin.clip_gradients(optimizer, *self.clip)
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}  # this optimiser's only
        named = [(name, p) for name, p in pl_module.named_parameters() if id(p) in stepped and p.grad is not None]
        if not named:
            return
        finite = torch.stack([torch.isfinite(p.grad).all() for _, p in named]).all()
        if not bool(finite):  # AMP will skip this step: keep the filter state as it was
            return
        with torch.no_grad():
            for name, p in named:
                filtered = self.filter_gradient(name, p.grad)
                p.grad.copy_(filtered + self.l2 * p if self.l2 else filtered)

    def state_dict(self) -> dict[str, Any]:
        return {"filter": self.filter, "state": {name: t.detach().clone() for name, t in self.state.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        require(state_dict["filter"] == self.filter, "filter", self.filter,
                f"the filter the checkpoint was trained with ({state_dict['filter']})")
        self.state = dict(state_dict["state"])
