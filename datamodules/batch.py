"""What one batch of any task holds, and the sizes a net needs from the task."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

FORMATS = ("onehot", "tokens", "sequence")  # how an equation is encoded: one-hot (a, b), [a, OP, b, =], full sequence


class Batch(NamedTuple):
    """inputs: (N, in_features) floats or (N, T_in) token ids.
    targets: (N, T) class ids, aligned with the *last* T output positions of the net (T = 1 for answer-only tasks).
    loss_mask: (N, T) float, 1 where the loss is taken.
    group: (N,) an integer per example (the operation's index on multi-op data), for per-group metrics.
    """

    inputs: Tensor
    targets: Tensor
    loss_mask: Tensor
    group: Tensor


@dataclass(frozen=True)
class TaskSpec:
    """Sizes a net is built with (filled in by the launcher) and where the answer sits in `targets`."""

    num_classes: int
    in_features: int | None = None  # one-hot inputs
    vocab_size: int | None = None  # token inputs
    seq_len: int | None = None
    answer_position: int = 0  # index into the T axis of Batch.targets that holds the answer
    input_kind: str = "tokens"  # "onehot" or "tokens": which nets can read it
    group_names: tuple[str, ...] = ()
