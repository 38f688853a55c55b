"""What one batch of any task holds, and what a task tells the net and the module about itself."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

FORMATS = ("onehot", "tokens", "sequence")  # how an equation is encoded: one-hot (a, b), [a, OP, b, =], full sequence
ANSWER_METRICS = ("acc", "exact_match", "position_acc", "perplexity", "bits_per_byte")
DECODINGS = ("teacher_forced", "greedy")


class Batch(NamedTuple):
    """inputs: (N, in_features) floats or (N, T_in) token ids.
    targets: (N, T) class ids, aligned with the *last* T output positions of the net (T = 1 for answer-only tasks).
    loss_mask: (N, T) float, 1 where the loss is taken.
    answer_mask: (N, T) bool, True on the positions that make up the answer (what accuracy is measured on).
    group: (N,) an integer per example (the operation on multi-op data, the carry-chain length on digit tasks),
        named by `TaskSpec.group_names`, for per-group metrics.
    """

    inputs: Tensor
    targets: Tensor
    loss_mask: Tensor
    answer_mask: Tensor
    group: Tensor


def answer_columns(answer_mask: Tensor) -> Tensor:
    """(k,) the target positions of the answer, for tasks whose answers sit in the same columns in every row (every
    task so far: one answer position, or a digit task's n + 1)."""
    return answer_mask[0].nonzero().flatten()


@dataclass(frozen=True)
class TaskSpec:
    """What a task declares: the sizes a net is built with (filled in by the launcher), which answer metrics it
    means, and how its answers are read at evaluation.

    metrics (each logged as `<split>/<name>`; `loss` always is):
      acc            accuracy over answer tokens (the answer's accuracy when it is one token)
      exact_match    share of examples whose every answer token is right
      position_acc   accuracy of the i-th answer token, as `acc/position_<i>`
      perplexity     exp(loss), language models
      bits_per_byte  the loss summed over the targets / ln 2 / the bytes of text they stand for (`token_bytes` of
                     each target id, or `bytes_per_token` each), language models
    decoding: `teacher_forced` reads the answer from one forward of the whole sequence; `greedy` generates it
      token by token from the prompt (each answer token fed back), so a wrong digit is not corrected by the input.
    group_names: names of the values of `Batch.group` (per-group accuracy `acc/<name>` when there are several).
    """

    num_classes: int
    in_features: int | None = None  # one-hot inputs
    vocab_size: int | None = None  # token inputs
    seq_len: int | None = None
    input_kind: str = "tokens"  # "onehot" or "tokens": which nets can read it
    group_names: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ("acc",)
    decoding: str = "teacher_forced"
    answer_length: int = 1  # answer tokens per example, the same positions in every row (for position_acc)
    bytes_per_token: float = 1.0  # for bits_per_byte, when every id stands for as many bytes
    token_bytes: tuple[int, ...] | None = None  # for bits_per_byte: the bytes of text each id stands for (sub-words)

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in ANSWER_METRICS]
        if unknown:
            raise ValueError(f"unknown task metrics {unknown}: expected some of {', '.join(ANSWER_METRICS)}")
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding={self.decoding!r}: expected one of {', '.join(DECODINGS)}")
