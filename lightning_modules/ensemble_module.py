"""The LightningModule of an ensemble: E members of one configuration, one vmapped step, per-member bookkeeping.

Members share the data and the architecture; they differ in their initial weights and in per-member
hyper-parameters (learning rate, weight decay, declared lr, regulariser weights). Each step computes every
member's loss, metrics and regulariser terms exactly as `TaskModule` does for a solo run (the same step functions,
lightning_modules.step, under `torch.func.vmap`, so the same metric names), backpropagates their sum (members are independent,
so each row of the flat parameter gets its own member's gradient) and lets `StackedAdamW` update each member
as its solo AdamW would.

`compile` runs the members' step (forward, loss, metrics; its backward with it) and the AdamW update through
`torch.compile`: the elementwise chains around the batched matmuls fuse into a few kernels. `auto` compiles on a
CUDA device, where a step is many kernels over (members x ...) tensors, and not on a CPU, where the compile time
(tens of seconds) outweighs what it saves in the runs a CPU trains. Nets that draw random numbers (Gumbel routing)
draw other ones compiled than eager.

A member leaves training for good when its loss turns non-finite (diverged: that step and all later ones are
skipped on the device, so its weights stay those of its last good step) or when its grokking patience has run
out (stopped): its row is then frozen and its metrics no longer logged, while the others go on. Host reads
happen only on logging and validation steps, as in a solo run.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from core.errors import require
from datamodules.batch import Batch, TaskSpec
from lightning_modules.answers import answer_sums, metric_layout, metrics_from_sums, task_loss, token_bytes_of
from lightning_modules.cadence import is_log_step
from lightning_modules.optimization import AdamWRecipe
from lightning_modules.param_groups import split_by_decay
from lightning_modules.stacked import StackedNets
from lightning_modules.stacked_adamw import StackedAdamW
from lightning_modules.step import MetricLayout, step_loss, step_metrics
from regularizers.base import Regularizer


class EnsembleModule(pl.LightningModule):
    def __init__(self, nets: Sequence[nn.Module], spec: TaskSpec, recipes: Sequence[AdamWRecipe],
                 regularizers: Sequence[Mapping[str, Regularizer]], max_grad_norm: float | None, members,
                 checkpoint_every: int | None = None, compile: bool | str = "auto"):
        """members: the host-side records (`runtime.engines.members.Member`), one per net, told every measurement.
        checkpoint_every: write each training member's weights every this many steps (null = only at the end).
        compile: `torch.compile` the step and the update: auto (on a CUDA device), true or false (see above)."""
        super().__init__()
        require(isinstance(compile, bool) or compile == "auto", "compile", compile, "auto, true or false")
        self.compile_setting, self.compiled = compile, False
        self._step = self.vmapped_step
        self.stacked = StackedNets(nets)
        self.spec, self.recipes, self.max_grad_norm = spec, list(recipes), max_grad_norm
        self.checkpoint_every = checkpoint_every
        self.records = list(members)
        self.regularizers = dict(regularizers[0])  # the terms (shared); their weights are per member
        for name in self.regularizers:
            self.register_buffer(f"reg_weight_{name}", torch.tensor([float(r[name].weight) for r in regularizers]))
        size = len(nets)
        self.register_buffer("active", torch.ones(size, dtype=torch.bool))
        self.register_buffer("first_bad", torch.full((size,), -1, dtype=torch.long))  # step of the first bad loss
        self.register_buffer("bad_value", torch.zeros(size))
        group_names, self.n_positions = metric_layout(spec)
        self.groups = dict(enumerate(group_names))
        self.layout = MetricLayout.of(spec, nets[0])  # a solo run's metric names (lightning_modules.step)
        self._exempt = set(split_by_decay(nets[0], recipes[0].decay)[1])  # no weight decay
        self._declared = set(getattr(nets[0], "no_weight_decay", set)())
        self._train_metrics: dict[str, Tensor] | None = None
        self._eval_sums: Tensor | None = None

    # -- training ---------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit":  # before the optimiser is built: it compiles its update too
            self.prepare_step(self.trainer.strategy.root_device)

    def prepare_step(self, device: torch.device) -> None:
        """Compile the step (and, in `configure_optimizers`, the update) or not, for training on `device`."""
        self.compiled = self.compile_setting is True or (self.compile_setting == "auto" and device.type == "cuda")
        self._step = torch.compile(self.vmapped_step, dynamic=False) if self.compiled else self.vmapped_step

    def reg_weights(self) -> dict[str, Tensor]:
        return {name: getattr(self, f"reg_weight_{name}") for name in self.regularizers}

    def member_step(self, row: Tensor, weights: dict[str, Tensor], batch: Batch, log: bool):
        """One member's training step (inside vmap): its total loss, and on logging steps the metrics a solo run
        of it logs (the same step functions, lightning_modules.step)."""
        result = step_loss(self.stacked.call(row, batch.inputs), batch, self.regularizers, weights)
        return result.total, (step_metrics(result, batch, self.layout) if log else {})

    def vmapped_step(self, weights: dict[str, Tensor], batch: Batch, log: bool):
        """Every member's `member_step` at once: (E,) totals, and on logging steps {metric: (E,) values}."""
        return self.stacked.vmap(lambda row, w, b: self.member_step(row, w, b, log), weights, batch, in_dims=(0, None))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        log = is_log_step(self.global_step + 1, self.trainer)
        total, metrics = self._step(self.reg_weights(), batch, log)  # compiled or not (`setup`)
        finite = torch.isfinite(total)
        newly_bad = self.active & ~finite
        self.first_bad.copy_(torch.where(newly_bad, self.global_step, self.first_bad))
        self.bad_value.copy_(torch.where(newly_bad, total.detach().float(), self.bad_value))
        self.active &= finite  # the optimiser's `keep`: read when the update runs, after this closure
        self._train_metrics = metrics if log else None
        return torch.where(finite, total, 0).sum()

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int) -> None:
        if self._train_metrics is not None:
            names = list(self._train_metrics)
            values = torch.stack([self._train_metrics[n].float() for n in names], 1).tolist()  # one read: (E, K)
            self.report_health()
            for record, row in zip(self.records, values):
                record.train_metrics(self.global_step, dict(zip(names, row)))
            self._train_metrics = None
            self.log("ensemble/training", float(sum(record.training for record in self.records)), prog_bar=True)
        self.stop_finished_members()
        if self.checkpoint_every and self.global_step % self.checkpoint_every == 0:
            for index, record in enumerate(self.records):
                if record.training:
                    record.save_weights(self.stacked.member_state(index), self.global_step, {"index": index})

    def report_health(self) -> None:
        """Tell each record whether its member diverged, and at which step (one host read)."""
        for record, bad, value in zip(self.records, self.first_bad.tolist(), self.bad_value.tolist()):
            if bad >= 0:
                record.diverged(bad, value)

    def stop_finished_members(self) -> None:
        for index, record in enumerate(self.records):
            if record.training and record.should_stop(self.global_step):
                record.stop(self.global_step, self.trainer.max_steps)
                self.active[index] = False
        if not any(record.training for record in self.records):
            self.trainer.should_stop = True

    def configure_optimizers(self) -> StackedAdamW:
        recipes, flat = self.recipes, self.stacked.flat
        column = lambda values: torch.tensor(values, dtype=flat.dtype, device=flat.device)[:, None]  # noqa: E731
        lr = column([r.lr for r in recipes])
        declared_lr = column([r.declared_lr if r.declared_lr is not None else r.lr for r in recipes])
        lr = torch.where(self.stacked.element_mask(self._declared), declared_lr, lr)
        weight_decay = torch.where(self.stacked.element_mask(self._exempt), 0.0,
                                   column([r.weight_decay for r in recipes]))
        first = recipes[0]
        return StackedAdamW(flat, lr, weight_decay, first.betas, first.eps, first.warmup_steps, self.max_grad_norm,
                            keep=self.active, compiled=self.compiled)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        if batch.inputs.device == device:  # served from on-device tensors (datamodules.loaders)
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # -- evaluation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def eval_sums(self, batch: Batch) -> Tensor:
        """(E, K): per member the sums its answer metrics are ratios of (lightning_modules.answers.answer_sums)."""
        n_groups, n_positions = len(self.groups), self.n_positions
        token_bytes = token_bytes_of(self.spec, batch.targets.device)

        def member(row: Tensor, batch: Batch) -> Tensor:
            loss, logits = task_loss(self.stacked.call(row, batch.inputs), batch)
            return answer_sums(loss, logits, batch, n_groups, n_positions, token_bytes)

        return self.stacked.vmap(member, batch, in_dims=(None,))

    @torch.no_grad()
    def evaluate(self, batches) -> list[dict[str, float]]:
        """Per member, the task's metrics of the current weights over `batches` (a whole split)."""
        was_training = self.training
        self.eval()
        device = self.stacked.flat.device
        sums = sum(self.eval_sums(Batch(*(t.to(device) for t in batch))) for batch in batches)
        self.train(was_training)
        return [self.eval_metrics(row) for row in sums]

    def eval_metrics(self, sums: Tensor) -> dict[str, float]:
        """One member's metrics from its summed `eval_sums` row."""
        metrics = metrics_from_sums(sums, self.spec, tuple(self.groups.values()), self.n_positions)
        return {name: value.item() for name, value in metrics.items()}

    def on_validation_epoch_start(self) -> None:
        self._eval_sums = None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        sums = self.eval_sums(batch)
        self._eval_sums = sums if self._eval_sums is None else self._eval_sums + sums

    def on_validation_epoch_end(self) -> None:
        if self._eval_sums is None or self.trainer.sanity_checking:
            return
        rows = [self.eval_metrics(row) for row in self._eval_sums.cpu()]  # one read
        self.report_health()
        for record, row in zip(self.records, rows):
            record.val_metrics(self.global_step, row)
        accs = [row["acc"] for row, record in zip(rows, self.records) if record.training and "acc" in row]
        if accs:
            self.log_dict({"ensemble/val_acc_min": min(accs), "ensemble/val_acc_max": max(accs)}, prog_bar=True)
