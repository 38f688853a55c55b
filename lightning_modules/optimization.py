"""AdamW with decay/no-decay parameter groups, linear warmup and an optional decay of the learning rate, built
from the `optimizer` config group."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from core.errors import require
from lightning_modules.cuda_graph import GraphedAdamW
from lightning_modules.param_groups import DecayPolicy, split_by_decay

SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class AdamWRecipe:
    """Everything about the optimiser in one flat config node (`optimizer.lr`, `optimizer.weight_decay`, ...).

    Defaults follow the grokking seeds: beta2 = 0.98 (shorter memory, steadier full-batch training),
    eps = 1e-8, and a linear warmup of `warmup_steps` from lr/warmup_steps to lr.
    `schedule` after the warmup: constant (the grokking runs) | cosine | linear, from lr down to
    lr * `final_lr_fraction` at step `decay_steps` (the config sets it to trainer.max_steps), flat after that.
    """

    lr: float = 1e-3
    betas: Sequence[float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 1.0
    warmup_steps: int = 0
    decay: DecayPolicy = field(default_factory=DecayPolicy)
    declared_lr: float | None = None  # own learning rate for what a net declares (gates, routing); None = lr
    fused: bool = True  # torch's fused AdamW kernel: one launch per step instead of one per tensor and op
    schedule: str = "constant"
    decay_steps: int | None = None
    final_lr_fraction: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.decay, dict) or hasattr(self.decay, "items"):
            unknown = set(self.decay) - set(DecayPolicy.__dataclass_fields__)
            require(not unknown, "decay", sorted(unknown), f"keys among {', '.join(DecayPolicy.__dataclass_fields__)}")
            self.decay = DecayPolicy(**dict(self.decay))
        require(isinstance(self.lr, (int, float)) and self.lr > 0, "lr", self.lr, "a positive number")
        betas = tuple(self.betas)
        require(len(betas) == 2 and all(0 <= b < 1 for b in betas), "betas", list(betas), "two numbers in [0, 1)")
        self.betas = betas
        require(isinstance(self.eps, (int, float)) and self.eps > 0, "eps", self.eps, "a positive number")
        require(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, "weight_decay",
                self.weight_decay, "a number >= 0")
        require(self.declared_lr is None or (isinstance(self.declared_lr, (int, float)) and self.declared_lr > 0),
                "declared_lr", self.declared_lr, "null or a positive number")
        require(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "warmup_steps", self.warmup_steps,
                "an integer >= 0")
        require(isinstance(self.fused, bool), "fused", self.fused, "true or false")
        require(self.schedule in SCHEDULES, "schedule", self.schedule, " | ".join(SCHEDULES))
        if self.schedule != "constant":
            require(isinstance(self.decay_steps, int) and self.decay_steps > self.warmup_steps, "decay_steps",
                    self.decay_steps, f"an integer > warmup_steps ({self.warmup_steps}) with schedule={self.schedule}",
                    related=["warmup_steps"])
        require(isinstance(self.final_lr_fraction, (int, float)) and 0 <= self.final_lr_fraction <= 1,
                "final_lr_fraction", self.final_lr_fraction, "a number in [0, 1]")

    def lr_factor(self, step: int) -> float:
        """The learning rate at optimiser step `step` (0-based) as a fraction of `lr`."""
        warmup = max(self.warmup_steps, 1)
        if step + 1 < warmup or self.schedule == "constant":
            return min(1.0, (step + 1) / warmup)
        progress = min((step + 1 - warmup) / (self.decay_steps - warmup), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1 - progress
        return self.final_lr_fraction + (1 - self.final_lr_fraction) * shape

    def param_groups(self, net: nn.Module) -> list[dict]:
        """decay / no_decay groups; with `declared_lr`, the declared parameters move to groups of their own
        (`declared_decay` / `declared_no_decay`) with that learning rate."""
        params = dict(net.named_parameters())
        decayed, exempt = split_by_decay(net, self.decay)
        declared = set(getattr(net, "no_weight_decay", set)()) if self.declared_lr is not None else set()
        groups = []
        for prefix, names, lr in (("", lambda n: n not in declared, self.lr),
                                  ("declared_", lambda n: n in declared, self.declared_lr)):
            for name, members, wd in (("decay", decayed, self.weight_decay), ("no_decay", exempt, 0.0)):
                chosen = [params[n] for n in members if names(n)]
                if chosen:
                    groups.append({"name": prefix + name, "params": chosen, "weight_decay": wd, "lr": lr})
        return groups

    def build(self, net: nn.Module, graphed: bool = False, fused: bool | None = None
              ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """graphed: an AdamW whose update can be captured in a CUDA graph (`lightning_modules.cuda_graph`).
        fused: overrides `self.fused` (the module turns it off where Lightning cannot clip a fused optimiser)."""
        fused = self.fused if fused is None else fused
        if graphed:
            optimizer = GraphedAdamW(self.param_groups(net), lr=self.lr, betas=self.betas, eps=self.eps, fused=True,
                                     capturable=True)
        else:
            optimizer = torch.optim.AdamW(self.param_groups(net), lr=self.lr, betas=self.betas, eps=self.eps,
                                          fused=fused or None)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
