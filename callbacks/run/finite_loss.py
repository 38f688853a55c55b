"""Stops a run whose loss turns NaN or inf before the bad step is applied, so the last checkpoint stays good.

Reading the loss on the host every step would stall a GPU on every step (the CPU could no longer queue work
ahead). With a fused optimiser (`optimizer.fused: true`, the default) the guard never reads it per step:

- each step writes the running sum of the losses since the last check into a small on-device ring; the sum
  turns non-finite at the first bad loss and stays so (inf + x = inf, nan + x = nan);
- `optimizer.found_inf` (the flag torch's GradScaler uses) is set from that sum, so the fused AdamW kernel
  skips the update, the moments and the step count on the device from the first bad step on;
- on logging steps (which read metrics anyway), when the ring is full, before a checkpoint is written and at the
  end, the ring is read once: a non-finite entry raises `NonFiniteLossError` naming the first bad step.

The weights are then exactly those after the last good step, as with an immediate check. On a CPU, or with a
non-fused optimiser, the loss is read every step.

The sum runs over every micro-batch (`accumulate_grad_batches`) and, under DDP, over every rank's loss (an
all-reduce on the device, no host read): all ranks then skip the same steps and stop at the same one.
"""
from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from core.errors import NonFiniteLossError
from lightning_modules.cadence import is_log_step


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """True when the optimiser's kernel honours `found_inf` (torch's fused Adam/AdamW/SGD)."""
    return bool(optimizer.defaults.get("fused"))


def summed_over_ranks(trainer: pl.Trainer, loss: torch.Tensor) -> torch.Tensor:
    """The loss summed over the DDP ranks (non-finite when any rank's is), enqueued on the device (not with
    `strategy.reduce`, whose barrier would block the host every step); the loss itself with one process."""
    if trainer.world_size == 1:
        return loss
    total = loss.detach().clone()
    dist.all_reduce(total)
    return total


class FiniteLossGuard(Callback):
    cuda_graph_safe = True  # under `module.cuda_graph` the captured step guards itself and this stays idle

    def __init__(self, check_every_n_steps: int | None = None, defer: bool | None = None):
        """check_every_n_steps: most steps between two host reads (null = the logging cadence);
        defer: read the ring only now and then (null = on accelerators, with a fused optimiser)."""
        self.check_every_n_steps, self.defer = check_every_n_steps, defer
        self._ring: torch.Tensor | None = None  # running loss sums since `_first`, one slot per step
        self._sum: torch.Tensor | None = None  # the running sum through the latest micro-batch
        self._found_inf: torch.Tensor | None = None
        self._first = 0  # the step of the ring's first slot
        self._deferred = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on a CPU a host read costs nothing and the check is exact at once (NaN steps are also slow there)
        fused = all(skips_on_device(opt) for opt in trainer.optimizers)
        self._deferred = fused and (pl_module.device.type != "cpu" if self.defer is None else self.defer)
        size = self.check_every_n_steps or max(trainer.log_every_n_steps, 1)
        self._ring = torch.zeros(size, device=pl_module.device)
        self._sum = torch.zeros((), device=pl_module.device)
        self._found_inf = torch.zeros((), device=pl_module.device)
        self._first = trainer.global_step

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        loss = summed_over_ranks(trainer, loss.detach())
        if not self._deferred:
            if not torch.isfinite(loss):
                raise NonFiniteLossError(trainer.global_step, float(loss))
            return
        self._sum.add_(loss)  # every micro-batch of the step adds to its slot
        self._ring[trainer.global_step - self._first].copy_(self._sum)
        torch.logical_not(torch.isfinite(self._sum), out=self._found_inf)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._deferred:
            optimizer.found_inf = self._found_inf  # read by the fused kernel when it runs, after this hook

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._deferred and (trainer.global_step - self._first >= len(self._ring)
                               or is_log_step(trainer.global_step, trainer)):
            self.check(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.check(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: pl.Trainer) -> None:
        """Read the ring (one host sync): raise for the first non-finite loss, else start a new ring."""
        if not self._deferred or trainer.global_step == self._first:
            return
        sums = self._ring[: trainer.global_step - self._first].tolist()
        for slot, total in enumerate(sums):
            if not math.isfinite(total):
                raise NonFiniteLossError(self._first + slot, total)
        self._first = trainer.global_step
        self._sum.zero_()
