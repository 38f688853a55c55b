"""The contract every task (DataModule) meets, so the module, the launcher and the diagnostics work on any task.

A task is a LightningDataModule that also provides:
- `spec`: a `TaskSpec` (sizes for the net, the answer metrics it means, how answers are decoded);
- batches as `Batch`es (inputs, targets, loss mask, answer mask, group) from its train/val/test loaders: the full
  split every step, shuffled mini-batches, or sampled windows of a stream;
- `split_names()`: the splits that hold data; `eval_batches(split)`: the fixed set of batches on which final
  numbers are computed (the whole split, in chunks, or a fixed sample when a split is too big for one pass);
- `examples(split, n)`: the same n examples of a split every time (the probes diagnostics run the net on).
Structure only some tasks have (the Z_p grid of modular arithmetic, operation labels) is offered through optional
methods (`modular_structure()`); a diagnostic that needs it says so in one line and stands aside where it is missing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, runtime_checkable

from torch import Tensor

from datamodules.batch import Batch, TaskSpec


@runtime_checkable
class Task(Protocol):
    @property
    def spec(self) -> TaskSpec: ...

    @property
    def has_test(self) -> bool: ...

    def split_names(self) -> tuple[str, ...]: ...

    def eval_batches(self, split: str) -> Iterable[Batch]: ...

    def examples(self, split: str, n: int) -> Batch: ...

    def train_dataloader(self) -> Iterable[Batch]: ...

    def val_dataloader(self) -> Iterable[Batch]: ...

    def test_dataloader(self) -> Iterable[Batch]: ...


@dataclass(frozen=True)
class ModularStructure:
    """What modular-arithmetic diagnostics and penalties read: Z_p, its operations and where residues sit.

    operand_columns: the columns of a and b in a token input row; None for one-hot inputs (a in 0..p-1, b in p..2p-1).
    all: every equation of every operation. grid: the first operation's (a, b) in a-major order (p * p rows when
    b = 0 is allowed), to read the net as a function on Z_p x Z_p.
    """

    p: int
    operations: tuple[str, ...]
    format: str
    operand_columns: tuple[int, int] | None
    all: Batch
    grid: Batch


def modular_structure(datamodule: object) -> ModularStructure | None:
    """The task's modular-arithmetic structure, or None for a task that has none."""
    method = getattr(datamodule, "modular_structure", None)
    return method() if callable(method) else None


def at_answers(values: Tensor, answer_mask: Tensor) -> Tensor:
    """The rows of a net's per-position output at the answer positions, example-major: (N, T_out, ...) -> (M, ...),
    M the number of answer tokens (targets align with the last T output positions). A net that answers once gives
    (N, ...) and keeps the rows whose one target is an answer."""
    if values.ndim == 3:
        return values[:, -answer_mask.shape[1]:][answer_mask.to(values.device)]
    return values[answer_mask[:, 0].to(values.device)]
