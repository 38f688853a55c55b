"""AdamW for a `StackedNets` flat parameter (E, P): every member's solo AdamW in one vectorised update.

Member e, element j steps as torch.optim.AdamW (decoupled weight decay) would with
- learning rate `lr[e, j]`: the member's lr, or its `declared_lr` on what the net declares (gates, routing);
- weight decay `weight_decay[e, j]`: the member's, or 0 on parameters exempt from decay (biases, norms, ...);
- its gradient first clipped to total norm `max_grad_norm` over the member's own parameters (as
  `clip_grad_norm_` on a solo net);
- the linear warmup of `AdamWRecipe` (factor min(1, t / warmup_steps) at update t).
A member whose `keep` entry is False this step (diverged, or stopped after grokking) is left exactly as it was:
weights, moments and step count. The module owns `keep` (its `active` mask) and updates it in place.

The update is one function of tensors (`adamw_update`: clipping, moments, bias corrections, decay, the step), with
the warmup's clock on the device, so that `compiled=True` (`torch.compile`) fuses its chain of ~20 elementwise ops
over (E, P) into a few kernels that read and write each tensor once, and no step reads anything back to the host.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


class StackedAdamW(torch.optim.Optimizer):
    def __init__(self, flat: Tensor, lr: Tensor, weight_decay: Tensor, betas: tuple[float, float], eps: float,
                 warmup_steps: int = 0, max_grad_norm: float | None = None, keep: Tensor | None = None,
                 compiled: bool = False):
        """lr, weight_decay: (E, P) per member and element (broadcastable shapes are expanded).
        keep: (E,) bool, the members that step; the caller may update it in place between steps.
        compiled: run the update through `torch.compile` (one fused kernel chain instead of ~20 ops)."""
        shape = flat.shape
        super().__init__([flat], {"lr": lr.expand(shape).clone(), "weight_decay": weight_decay.expand(shape).clone(),
                                  "betas": tuple(betas), "eps": eps})
        self.warmup_steps, self.max_grad_norm = max(warmup_steps, 1), max_grad_norm
        self.keep = torch.ones(shape[0], dtype=torch.bool, device=flat.device) if keep is None else keep
        self.updates = 0  # optimiser steps taken (kept or not): the warmup's clock, as LambdaLR's
        self.clock = torch.zeros((), dtype=torch.float64, device=flat.device)  # the same count, on the device
        self.compiled = compiled
        self._update = torch.compile(adamw_update, dynamic=False) if compiled else adamw_update

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.updates += 1
        self.clock += 1
        group = self.param_groups[0]
        (flat,) = group["params"]
        if flat.grad is None:
            return loss
        state = self.state[flat]
        if not state:
            state["step"] = torch.zeros(flat.shape[0], 1, device=flat.device)
            state["exp_avg"] = torch.zeros_like(flat)
            state["exp_avg_sq"] = torch.zeros_like(flat)
        beta1, beta2 = group["betas"]
        self._update(flat, flat.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], self.keep, group["lr"],
                     group["weight_decay"], self.clock, beta1, beta2, group["eps"], self.warmup_steps,
                     self.max_grad_norm)
        return loss

    def state_dict(self) -> dict:
        return {**super().state_dict(), "updates": self.updates, "keep": self.keep.clone()}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.updates = state_dict.pop("updates")
        self.clock.fill_(self.updates)
        self.keep.copy_(state_dict.pop("keep"))
        super().load_state_dict(state_dict)


def adamw_update(flat: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor, keep: Tensor,
                 lr: Tensor, weight_decay: Tensor, clock: Tensor, beta1: float, beta2: float, eps: float,
                 warmup_steps: int, max_grad_norm: float | None) -> None:
    """One AdamW update of every kept member, in place: `flat`, the moments and the (E, 1) step counts.
    clock: optimiser steps taken, this one included (the linear warmup's factor min(1, clock / warmup_steps))."""
    kept = keep[:, None]
    if max_grad_norm is not None:  # each member's own total norm, as clip_grad_norm_ on its solo net
        norms = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
        grad = grad * (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    new_step = step + kept
    new_avg = torch.lerp(exp_avg, grad, 1 - beta1)
    new_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
    lr = lr * (clock / warmup_steps).clamp(max=1.0).to(flat.dtype)
    # bias corrections in float64, as torch's AdamW takes them: in float32, 1 - 0.98**1 is off by 1.5e-6
    t = new_step.double()
    correction1, correction2 = (1 - beta1**t).to(flat.dtype), (1 - beta2**t).sqrt().to(flat.dtype)
    denom = new_avg_sq.sqrt() / correction2 + eps
    updated = flat * (1 - lr * weight_decay) - lr / correction1 * new_avg / denom
    flat.copy_(torch.where(kept, updated, flat))
    exp_avg.copy_(torch.where(kept, new_avg, exp_avg))
    exp_avg_sq.copy_(torch.where(kept, new_avg_sq, exp_avg_sq))
    step.copy_(new_step)
