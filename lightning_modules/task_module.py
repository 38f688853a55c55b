"""The one LightningModule: trains any net from `nets/` on any task (datamodules.task): task loss, regularisers,
the task's metrics, the optimiser.

The loss is cross-entropy on the positions the batch's `loss_mask` selects; the metrics are those the task
declares (`TaskSpec.metrics`, lightning_modules.answers) on the positions its `answer_mask` selects, read from one
teacher-forced forward or generated token by token (`TaskSpec.decoding`). Training metrics are computed and logged
only on logging steps, so a full-batch step costs what the net costs. They come from the step's own forward, so
they measure the weights before its update (callbacks/run/grokking_time.py counts a train threshold accordingly).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import Tensor, nn

from core.errors import NonFiniteLossError, require
from core.output import NetOutput
from datamodules.batch import Batch, TaskSpec
from lightning_modules.answers import AnswerMetrics, task_loss
from lightning_modules.cadence import is_log_step
from lightning_modules.cuda_graph import CapturedStep, capture_blocker, check_graphable
from lightning_modules.decoding import greedy_logits
from lightning_modules.optimization import AdamWRecipe
from lightning_modules.step import MetricLayout, StepResult, step_loss, step_metrics
from regularizers.base import Regularizer

EVAL_STAGES = ("val", "test")


class TaskModule(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        spec: TaskSpec,
        optimizer: AdamWRecipe,
        regularizers: Mapping[str, Regularizer] | None = None,
        cuda_graph: bool | str = "auto",
        init_fingerprint: str | None = None,
    ):
        """cuda_graph: capture the full-batch training step in a CUDA graph (lightning_modules.cuda_graph): `auto`
        where the run allows it, else eager; true: refuse a run that does not allow it; false: never. Decided when
        the fit starts (`plan_capture`).
        init_fingerprint: of the run's initial weights, stamped into every checkpoint, so that the run's identity
        survives a resume."""
        super().__init__()
        require(isinstance(cuda_graph, bool) or cuda_graph == "auto", "cuda_graph", cuda_graph, "auto, true or false")
        self.net, self.spec, self.recipe = net, spec, optimizer
        self.cuda_graph, self.init_fingerprint = cuda_graph, init_fingerprint
        self.capture = False  # whether this fit captures its step (`plan_capture`)
        self.eager_because: str | None = None  # why it does not, once decided
        self._captured: CapturedStep | None = None
        self._captured_batch: Batch | None = None
        self.regularizers = dict(regularizers or {})
        self.layout = MetricLayout.of(spec, net)  # the metric names of a step (lightning_modules.step)
        self.eval_metrics = nn.ModuleDict({stage: AnswerMetrics(spec) for stage in EVAL_STAGES})

    def forward(self, inputs: Tensor) -> NetOutput:
        return self.net(inputs)

    def setup(self, stage: str) -> None:
        if stage == "fit":  # before the optimiser is built: a captured step needs a capturable one
            self.plan_capture(self.trainer)

    def plan_capture(self, trainer: pl.Trainer) -> None:
        """Decide whether this fit captures its step: `module.cuda_graph=true` refuses by key a run that cannot be
        captured, `auto` runs it eager and says why in one line (on a CUDA device: elsewhere a captured step never
        runs, so there is nothing to say)."""
        self._captured = None
        if self.cuda_graph is False:
            self.capture, self.eager_because = False, "module.cuda_graph=false"
            return
        if self.cuda_graph is True:
            check_graphable(trainer, self)  # refuses, naming module.cuda_graph, what a captured step cannot honour
            self.eager_because = None
        else:
            self.eager_because = capture_blocker(trainer, self)
        self.capture = self.eager_because is None
        if trainer.strategy.root_device.type == "cuda" and trainer.is_global_zero:
            print(f"[grokking-lab] training step: captured in a CUDA graph from step {self.capture_step}"
                  if self.capture else f"[grokking-lab] note: training step eager, not captured in a CUDA graph "
                  f"(module.cuda_graph=auto), with {self.eager_because}", flush=True)

    @property
    def capture_step(self) -> int:
        """The step a captured step is captured at: the lr is constant from there on."""
        return max(self.recipe.warmup_steps, 3)

    @property
    def cuda_graph_status(self) -> str | None:
        """summary.json's `cuda_graph`: `captured`, or `eager (why)`; None before a fit decided."""
        if self._captured is not None:
            return "captured"
        if self.capture:
            return f"eager (the run ended before step {self.capture_step}, where its step would be captured)"
        return None if self.eager_because is None else f"eager ({self.eager_because})"

    def on_fit_start(self) -> None:
        for regularizer in self.regularizers.values():
            regularizer.bind(self)

    def step_result(self, batch: Batch) -> StepResult:
        """Forward, task loss and regulariser terms of one training step (lightning_modules.step)."""
        return step_loss(self.net(batch.inputs), batch, self.regularizers,
                         {name: reg.weight for name, reg in self.regularizers.items()})

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        if self.capture and self._captured is None and self.global_step >= self.capture_step:
            clip = self.trainer.gradient_clip_val
            self._captured = CapturedStep(lambda: self.step_result(batch), list(self.net.parameters()),
                                          self.optimizers().optimizer, float(clip) if clip else None,
                                          self.global_step)
            self._captured_batch = batch  # the full batch: it never moves

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        if self._captured is not None:
            return None  # no backward: the optimiser's step replays the whole captured step (`optimizer_step`)
        result = self.step_result(batch)
        if is_log_step(self.global_step + 1, self.trainer):
            self.log_train_metrics(result, batch)
        return result.total

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self._captured is not None and is_log_step(self.global_step + 1, self.trainer):
            self.log_train_metrics(self._captured.result, self._captured_batch)  # what the replay just computed

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        if self._captured is None:  # a replay writes the gradients afresh
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def log_train_metrics(self, result: StepResult, batch: Batch) -> None:
        # under DDP each rank measured its shard: the mean over ranks is the batch's (a collective on logging steps)
        self.log_dict(step_metrics(result, batch, self.layout), prog_bar=False, sync_dist=True)

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int) -> None:
        if self._captured is not None and is_log_step(self.global_step, self.trainer):
            self.check_finite()

    def check_finite(self) -> None:
        """Once captured: raise for a non-finite loss since capture (its update and later ones were skipped)."""
        if self._captured is not None and (step := self._captured.first_bad_step()) is not None:
            raise NonFiniteLossError(step, float(self._captured.loss_sum))

    def on_train_end(self) -> None:
        self.check_finite()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite()  # never write a checkpoint past a skipped (non-finite) step
        if self.init_fingerprint is not None:
            checkpoint["init_fingerprint"] = self.init_fingerprint

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        """Batches are served from on-device tensors (see datamodules.loaders): nothing to copy."""
        if batch.inputs.device == device:
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets bookkeeping attributes (e.g. `_current_fx_name`) around every hook, dozens of times a
        # step; nn.Module.__setattr__ checks parameters, buffers and submodules each time. An existing plain
        # attribute given a plain value cannot be any of those, so it is set directly.
        if name in self.__dict__ and not isinstance(value, (torch.Tensor, nn.Module)):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def answer_logits(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(teacher-forced loss, logits aligned with the targets from which answers are read: the same forward's,
        or, for tasks decoded greedily, each answer token's from a forward on the net's own earlier answers)."""
        loss, logits = task_loss(self.net(batch.inputs), batch)
        if self.spec.decoding == "greedy":
            logits = greedy_logits(self.net, batch)
        return loss, logits

    def _eval_step(self, stage: str, batch: Batch) -> None:
        self.eval_metrics[stage].update(*self.answer_logits(batch), batch)

    def _log_eval(self, stage: str) -> None:
        metrics = self.eval_metrics[stage]
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.compute().items()})
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def configure_optimizers(self):
        # Under a loss scaler (16-mixed) Lightning unscales the gradients before it clips them, which an optimiser
        # that unscales inside its own step (a fused one) does not allow: there the torch default (foreach) AdamW
        # is used, with a per-step NaN check. Without a scaler (32-bit, bf16-mixed) the module clips itself
        # (configure_gradient_clipping) and keeps the fused AdamW.
        scaled_and_clipped = has_scaler(self.trainer) and bool(self.trainer.gradient_clip_val)
        optimizer, scheduler = self.recipe.build(self.net, graphed=self.capture,
                                                 fused=False if scaled_and_clipped else None)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        """Clip as Lightning would, but without its mixed-precision plugin's refusal to clip a fused optimiser,
        which only matters when a scaler has scaled the gradients (then Lightning's own path is taken). A captured
        step clips inside its replay."""
        if self._captured is not None:
            return
        if not gradient_clip_val or has_scaler(self.trainer):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if GradClipAlgorithmType(gradient_clip_algorithm or "norm") == GradClipAlgorithmType.VALUE:
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """The task's metrics of the current weights over `batches` (a whole split: final numbers), on whichever
        device the module is (Lightning moves it back to the CPU when `fit` ends; the data may stay on a GPU)."""
        device = next(self.net.parameters()).device
        metrics = AnswerMetrics(self.spec).to(device)
        was_training = self.training
        self.eval()
        try:
            for batch in batches:
                batch = Batch(*(t.to(device) for t in batch))
                metrics.update(*self.answer_logits(batch), batch)
        finally:
            self.train(was_training)
        return {name: value.item() for name, value in metrics.compute().items()}


def has_scaler(trainer: pl.Trainer) -> bool:
    """True under 16-mixed, whose loss scaler scales the gradients until the optimiser step."""
    return getattr(trainer.precision_plugin, "scaler", None) is not None
