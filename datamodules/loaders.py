"""Batches served straight from on-device tensors.

A DataLoader over a TensorDataset collates full batches sample by sample (tens of ms per step); these
iterables index the tensors instead. The train loader is endless, so one Lightning epoch spans the whole run
and per-epoch costs are paid once; `max_steps` ends it. Batch k is a pure function of (seed, k), so a resumed run
starts at the restored step and sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

from typing import Iterator

import torch

from datamodules.batch import Batch


def generator_on(device: torch.device, seed: int) -> torch.Generator:
    """A generator on the training device for one batch's draws: what is drawn there needs no copy from the host,
    which on a GPU would make the host wait every step. A CPU draws what a CPU generator always drew; a GPU draws
    its own stream, the same on every GPU (so every process of a data-parallel run draws the same)."""
    return torch.Generator(device=device).manual_seed(seed)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor built on the host, on `device` without making the host wait: on a GPU it is copied from pinned
    memory asynchronously (as a DataLoader with `pin_memory` hands its batches over), ordered before every kernel
    that reads it."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def take(batch: Batch, index: torch.Tensor) -> Batch:
    return Batch(*(t[index] for t in batch))


def shard(batch: Batch, rank: int, world_size: int) -> Batch:
    """This process's share of a batch under data parallelism (every `world_size`-th example from `rank`)."""
    return batch if world_size == 1 else take(batch, slice(rank, None, world_size))


class TrainBatches:
    """Endless batches: the whole split every step (`batch_size` <= 0), or shuffled mini-batches per epoch."""

    def __init__(self, data: Batch, batch_size: int, shuffle_seed: int, first_step: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.data, self.batch_size, self.shuffle_seed = data, batch_size, shuffle_seed
        self.first_step = first_step  # the index of the first batch served (the restored step on resume)
        self.rank, self.world_size = rank, world_size  # under DDP each process serves its shard of each batch

    @property
    def full_batch(self) -> bool:
        return self.batch_size <= 0 or self.batch_size >= len(self.data.targets)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.data.targets)
        per_epoch = 1 if self.full_batch else -(-n // self.batch_size)
        step, order, order_epoch = self.first_step, None, None
        while True:
            if self.full_batch:
                batch = self.data
            else:
                epoch, i = divmod(step, per_epoch)
                if epoch != order_epoch:
                    device = self.data.targets.device
                    generator = generator_on(device, self.shuffle_seed * 1_000_003 + epoch)
                    order, order_epoch = torch.randperm(n, generator=generator, device=device), epoch
                batch = take(self.data, order[i * self.batch_size : (i + 1) * self.batch_size])
            yield shard(batch, self.rank, self.world_size)
            step += 1


class EvalBatches:
    """One pass over a split in chunks of `batch_size` (the whole split at once when <= 0)."""

    def __init__(self, data: Batch, batch_size: int):
        self.data, self.batch_size = data, batch_size
        n = len(data.targets)
        self.chunk = n if batch_size <= 0 else batch_size
        self.count = -(-n // self.chunk) if n else 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.data.targets)
        for start in range(0, n, self.chunk):
            yield self.data if self.chunk >= n else take(self.data, slice(start, start + self.chunk))
