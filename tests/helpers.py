"""Test-only pieces that configs can point `_target_` at, and the task contract a test builds a net from
(`task_spec`)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F

import callbacks.run.checkpoint
from callbacks.run.checkpoint import RunCheckpoint
from datamodules import ModularArithmetic
from datamodules.batch import Batch, TaskSpec
from datamodules.in_memory import InMemoryTask
from datamodules.loaders import EvalBatches, take
from lightning_modules.cuda_graph import CapturedStep
from regularizers.base import Regularizer


class NaNAfter(Regularizer):
    """Contributes 0 for `after` training calls, then NaN (up to call `until`, when given; on DDP rank `rank` only,
    when given): a run that diverges at a known step (one call per step, or per micro-batch)."""

    def __init__(self, weight: float = 1.0, after: int = 25, until: int | None = None, rank: int | None = None):
        super().__init__(weight)
        self.after, self.until, self.rank, self.calls = after, until, rank, 0

    def term(self, output):
        self.calls += 1
        bad = self.after < self.calls <= (self.until or self.calls)
        if self.rank is not None:
            bad = bad and dist.is_initialized() and dist.get_rank() == self.rank
        return torch.tensor(float("nan") if bad else 0.0, device=output.logits.device)


class NaNSwitch(Regularizer):
    """Contributes 0 until a `FlipToNaN` callback flips it, then NaN. The value lives in a device tensor the term
    reads, so a captured CUDA-graph step sees the flip too (a Python-side counter would be frozen at capture)."""

    instances: list["NaNSwitch"] = []

    def __init__(self, weight: float = 1.0):
        super().__init__(weight)
        self.value: torch.Tensor | None = None
        NaNSwitch.instances.append(self)

    def term(self, output):
        if self.value is None:
            self.value = torch.zeros((), device=output.logits.device)
        return self.value * 1.0


class FlipToNaN(pl.Callback):
    """After `at` optimiser steps, every NaNSwitch turns NaN."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at:
            for switch in NaNSwitch.instances:
                if switch.value is not None:
                    switch.value.fill_(float("nan"))


class RecordingCheckpoint(RunCheckpoint):
    """RunCheckpoint that remembers at which steps it wrote `last.ckpt`."""

    saved: list[int] = []

    def save(self, trainer):
        super().save(trainer)
        RecordingCheckpoint.saved.append(trainer.global_step)


class RankClockCheckpoint(RunCheckpoint):
    """RunCheckpoint whose clock (`time.monotonic` as callbacks.run.checkpoint reads it) is the step count, at
    `1 + rank` minutes a step on each DDP rank, so the ranks cross `every_minutes` at different steps; each save's
    step is appended to `saves.rank<r>` in its folder."""

    def on_train_start(self, trainer, pl_module):
        minutes = 1 + trainer.global_rank
        callbacks.run.checkpoint.time = SimpleNamespace(monotonic=lambda: 60.0 * minutes * trainer.global_step)
        super().on_train_start(trainer, pl_module)

    def teardown(self, trainer, pl_module, stage):
        callbacks.run.checkpoint.time = time

    def save(self, trainer):
        super().save(trainer)
        with open(self.dirpath / f"saves.rank{trainer.global_rank}", "a") as file:
            file.write(f"{trainer.global_step}\n")


class ValidatesOnTrain(ModularArithmetic):
    """Modular arithmetic whose validation split is the training split: train and val accuracy then measure the
    same examples, so they differ only in which weights they see."""

    def val_dataloader(self) -> EvalBatches:
        return EvalBatches(self.splits["train"], self.eval_batch_size)


class TrainAccuracyProbe(pl.Callback):
    """Before every training step, the train accuracy of the current weights, measured apart from the module's
    own metrics: `accs[k]` is that of the weights after k optimiser updates. `runs[-1]` is the latest probe."""

    runs: list["TrainAccuracyProbe"] = []

    def __init__(self):
        self.accs: list[float] = []
        TrainAccuracyProbe.runs.append(self)

    def on_train_batch_start(self, trainer, pl_module, *args):
        assert len(self.accs) == trainer.global_step
        self.accs.append(pl_module.evaluate(trainer.datamodule.eval_batches("train"))["acc"])


VOCAB, SEQ_LEN = 8, 6


class RandomTokens(InMemoryTask):
    """Random rows, no structure: next-token targets answered (and trained) at the last 2 positions, or with
    `onehot` one-hot inputs and one answer each."""

    def __init__(self, n: int = 48, onehot: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        if onehot:
            inputs = F.one_hot(torch.randint(0, VOCAB, (n,), generator=g), VOCAB).float()
            targets = torch.randint(0, VOCAB, (n, 1), generator=g)
            answer = torch.ones(n, 1, dtype=torch.bool)
            self._spec = TaskSpec(num_classes=VOCAB, in_features=VOCAB, input_kind="onehot")
        else:
            tokens = torch.randint(0, VOCAB, (n, SEQ_LEN + 1), generator=g)
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            answer = torch.zeros(n, SEQ_LEN, dtype=torch.bool)
            answer[:, -2:] = True
            self._spec = TaskSpec(num_classes=VOCAB, vocab_size=VOCAB, seq_len=SEQ_LEN,
                                  metrics=("acc", "exact_match"))
        every = Batch(inputs, targets, answer.float(), answer, torch.zeros(n, dtype=torch.long))
        self.splits = {"train": take(every, slice(0, 32)), "val": take(every, slice(32, n)),
                       "test": take(every, slice(0, 0))}

    @property
    def spec(self) -> TaskSpec:
        return self._spec


class EagerReplayStep(CapturedStep):
    """The captured step's CPU analogue: the capture keeps the step's body, and each replay runs it eagerly on fresh
    gradients (a CUDA graph's replay writes them afresh too). Everything around the graph (when the module captures,
    what a replay logs, the lr schedule, clipping, the in-graph NaN guard, checkpoints) then runs on a CPU as it runs
    around a real graph. `replays` counts the replays of the latest one."""

    latest: "EagerReplayStep | None" = None

    def warm_up(self, compute, optimizer, iterations):
        self.optimizer, self.replays = optimizer, 0
        EagerReplayStep.latest = self

    def record(self, body):
        def replay():
            self.optimizer.zero_grad(set_to_none=True)
            body()
            self.replays += 1

        return replay


def task_spec(data_cfg, cache_dir) -> TaskSpec:
    """The task contract of a composed `data` config, as a net is built from it. The hybrid LM's seed-size corpus
    (data.corpus=package) is an optional install that `make setup` leaves out, so here its data reads the bundled text
    instead, with the same tokenizer settings (a BPE of that text has fewer than `vocab_size` tokens); the tokenizer
    and token files go to `cache_dir`, not the user's cache."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if OmegaConf.select(data_cfg, "corpus") is not None:
        data_cfg = OmegaConf.merge(data_cfg, {"cache_dir": str(cache_dir)})
        if data_cfg.corpus == "package":
            data_cfg.corpus = "bundled"
    return instantiate(data_cfg).spec
