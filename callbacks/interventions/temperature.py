"""Anneals the temperature of Gumbel gates (the least-action study: Gumbel-sigmoid gates "with temperature and
annealing").

High temperatures give soft, exploratory gate samples; low ones near-binary samples, so a run can start soft and
end with hard on/off layers. The temperature is a pure function of the step, so resuming needs no saved state:

    linear:       T(s) = start + (end - start) * min(s / steps, 1)
    exponential:  T(s) = start * (end / start) ** min(s / steps, 1)
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from core.errors import require
from lightning_modules.cadence import is_log_step

SCHEDULES = ("linear", "exponential")


def annealed_temperature(step: int, start: float, end: float, steps: int, schedule: str) -> float:
    progress = min(step / steps, 1.0)
    if schedule == "linear":
        return start + (end - start) * progress
    return start * (end / start) ** progress


class TemperatureAnnealing(Callback):
    """Sets `net.temperature` before every training step; logs it as `gates/temperature` on logging steps."""

    changes_between_steps = "net.temperature"  # a number a captured CUDA-graph step would keep at its first value

    def __init__(self, start: float = 1.0, end: float = 0.1, steps: int = 5000, schedule: str = "exponential"):
        require(start > 0 and end > 0, "temperature", (start, end), "positive start and end temperatures")
        require(isinstance(steps, int) and steps >= 1, "steps", steps, "an integer >= 1")
        require(schedule in SCHEDULES, "schedule", schedule, ", ".join(SCHEDULES))
        self.start, self.end, self.steps, self.schedule = start, end, steps, schedule

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        require(hasattr(pl_module.net, "temperature"), "callbacks.temperature", type(pl_module.net).__name__,
                "a net with a gate temperature (model=gated_mlp with model.gate_type=gumbel)")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        pl_module.net.temperature = annealed_temperature(step, self.start, self.end, self.steps, self.schedule)
        if is_log_step(step + 1, trainer):
            pl_module.log("gates/temperature", pl_module.net.temperature)
