"""A task whose splits are whole tensors held on the training device (the algorithmic tasks): the shared part.

Subclasses build `self.splits` ({"train", "val", "test"} -> Batch, possibly empty test) in `__init__` and set
`batch_size`, `eval_batch_size` and `shuffle_seed`; this class moves the splits to the device once and serves
batches without copies (datamodules.loaders), under DDP each process its shard.
"""
from __future__ import annotations

from typing import Iterable

import lightning.pytorch as pl
import torch

from datamodules.batch import Batch
from datamodules.loaders import EvalBatches, TrainBatches, shard, take


class InMemoryTask(pl.LightningDataModule):
    splits: dict[str, Batch]
    batch_size: int = -1
    eval_batch_size: int = -1
    shuffle_seed: int = 0

    def setup(self, stage: str | None = None) -> None:
        """Move every split to the training device once; batches are then served without copies."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.splits = {name: Batch(*(t.to(device) for t in split)) for name, split in self.splits.items()}

    def train_dataloader(self) -> TrainBatches:
        # Lightning asks for it after restoring a checkpoint, so global_step is the step to resume from
        first_step = self.trainer.global_step if self.trainer is not None else 0
        return TrainBatches(self.splits["train"], self.batch_size, self.shuffle_seed, first_step, *self._ranks())

    def val_dataloader(self) -> EvalBatches:
        return EvalBatches(shard(self.splits["val"], *self._ranks()), self.eval_batch_size)

    def test_dataloader(self) -> EvalBatches:
        return EvalBatches(shard(self.splits["test"], *self._ranks()), self.eval_batch_size)

    def _ranks(self) -> tuple[int, int]:
        """(rank, world size): under DDP each process trains and evaluates on its shard; metrics are synced."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def split_names(self) -> tuple[str, ...]:
        return tuple(name for name, split in self.splits.items() if len(split.targets))

    def eval_batches(self, split: str) -> Iterable[Batch]:
        """The whole split, in chunks of `eval_batch_size` (all at once when -1), on one process."""
        return EvalBatches(self.splits[split], self.eval_batch_size)

    def examples(self, split: str, n: int) -> Batch:
        """The first n examples of `split` (the split's order is fixed by its seed)."""
        return take(self.splits[split], slice(0, n))

    @property
    def has_test(self) -> bool:
        return len(self.splits["test"].targets) > 0
