"""The task loss and the answer metrics a task declares, as pure tensor code (vmap-able, for ensembles too).

Targets are aligned with the last T output positions of the net. The loss is cross-entropy averaged over the
positions `loss_mask` selects; answers are the positions `answer_mask` selects: `acc` is accuracy over answer
tokens, `exact_match` the share of examples whose every answer token is right, `acc/position_<i>` the accuracy of
the i-th answer token, `acc/<group>` and `exact_match/<group>` the same per group (operation, carry chain).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torchmetrics import Metric

from core.output import NetOutput
from datamodules.batch import Batch, TaskSpec, answer_columns


def aligned_logits(output: NetOutput, n_targets: int) -> Tensor:
    """(N, T, classes): the net's logits at the T positions that have targets (the last T)."""
    logits = output.logits if output.logits.ndim == 3 else output.logits[:, None]
    return logits[:, -n_targets:]


def task_loss(output: NetOutput, batch: Batch) -> tuple[Tensor, Tensor]:
    """(cross-entropy averaged over the positions `batch.loss_mask` selects, aligned logits (N, T, classes))."""
    logits = aligned_logits(output, batch.targets.shape[1])
    if batch.targets.shape[1] == 1:  # answer-only tasks: the mask is all ones
        return F.cross_entropy(logits[:, 0], batch.targets[:, 0]), logits
    ce = F.cross_entropy(rearrange(logits, "n t c -> (n t) c"), batch.targets.flatten(), reduction="none")
    mask = batch.loss_mask.flatten()
    return (ce * mask).sum() / mask.sum(), logits


def answer_correct(logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """((N, T) float: 1 where an answer token is right, (N, T) float answer mask)."""
    mask = batch.answer_mask.to(logits.dtype)
    return (logits.argmax(-1) == batch.targets).to(logits.dtype) * mask, mask


def exact_answers(correct: Tensor, mask: Tensor) -> Tensor:
    """(N,) 1 where every answer token of the example is right (`answer_correct`'s two tensors)."""
    return (correct.sum(1) == mask.sum(1)).to(correct.dtype)


def batch_accuracy(logits: Tensor, batch: Batch) -> dict[str, Tensor]:
    """`acc` over answer tokens and `exact_match` over examples of one batch (training metrics)."""
    correct, mask = answer_correct(logits, batch)
    if mask.shape[1] == 1:
        return {"acc": correct.mean()}
    return {"acc": correct.sum() / mask.sum(), "exact_match": exact_answers(correct, mask).mean()}


def metric_layout(spec: TaskSpec) -> tuple[tuple[str, ...], int]:
    """(the groups metrics are reported for: none unless the task has several, answer positions reported one by
    one: none unless the task asks for `position_acc`), the shape of `answer_sums`."""
    groups = spec.group_names if len(spec.group_names) > 1 else ()
    return groups, spec.answer_length if "position_acc" in spec.metrics else 0


def answer_sums(loss: Tensor, logits: Tensor, batch: Batch, n_groups: int, n_positions: int,
                token_bytes: Tensor | None = None) -> Tensor:
    """The sums every answer metric is a ratio of, for one batch, as one float64 vector (pure tensor code: an
    ensemble computes it per member under vmap). Layout: loss x loss weight, loss weight, right answer tokens,
    answer tokens, exact answers, examples, then per group right tokens, tokens, exact answers, examples
    (`n_groups` each; none when 0), then right answers per answer position (`n_positions`), then, when the task
    gives `token_bytes` (bytes of text per id, `token_bytes_of`), the bytes the loss-weighted targets stand for."""
    correct, mask = answer_correct(logits.float(), batch)
    per_example, answer_len = correct.sum(1).double(), mask.sum(1).double()
    exact = exact_answers(correct, mask).double()
    loss_weight = batch.loss_mask.sum().double()
    parts = [torch.stack([loss.double() * loss_weight, loss_weight, per_example.sum(), answer_len.sum(),
                          exact.sum(), torch.ones_like(exact).sum()])]
    if n_groups:
        in_group = F.one_hot(batch.group.long(), n_groups).double()  # (N, G)
        parts += [in_group.T @ per_example, in_group.T @ answer_len, in_group.T @ exact, in_group.sum(0)]
    if n_positions:  # the i-th answer token of each example (the same columns in every row)
        parts.append(correct[:, answer_columns(batch.answer_mask)].sum(0).double())
    if token_bytes is not None:
        parts.append((token_bytes[batch.targets].double() * batch.loss_mask.double()).sum().reshape(1))
    return torch.cat(parts)


def token_bytes_of(spec: TaskSpec, device: torch.device | str | None = None) -> Tensor | None:
    """(vocab,) float64: bytes of text per id for tasks that declare them (sub-word LMs), else None."""
    return None if spec.token_bytes is None else torch.tensor(spec.token_bytes, dtype=torch.float64, device=device)


def metrics_from_sums(sums: Tensor, spec: TaskSpec, group_names: tuple[str, ...], n_positions: int) -> dict[str, Tensor]:
    """The task's metrics (`TaskSpec.metrics`) and the loss from summed `answer_sums`."""
    loss_sum, loss_weight, right, tokens, exact, examples = sums[:6]
    g = len(group_names)
    group_right, group_tokens, group_exact, group_examples = sums[6:6 + 4 * g].reshape(4, g)
    position_right = sums[6 + 4 * g:6 + 4 * g + n_positions]
    loss = loss_sum / loss_weight
    values = {"loss": loss}
    if "acc" in spec.metrics:
        values["acc"] = right / tokens
        values |= {f"acc/{name}": group_right[i] / group_tokens[i]
                   for i, name in enumerate(group_names) if group_tokens[i] > 0}
    if "exact_match" in spec.metrics:
        values["exact_match"] = exact / examples
        values |= {f"exact_match/{name}": group_exact[i] / group_examples[i]
                   for i, name in enumerate(group_names) if group_examples[i] > 0}
    if "position_acc" in spec.metrics:
        values |= {f"acc/position_{i}": position_right[i] / examples for i in range(n_positions)}
    if "perplexity" in spec.metrics:
        values["perplexity"] = loss.exp()
    if "bits_per_byte" in spec.metrics:
        covered = sums[-1] if spec.token_bytes is not None else loss_weight * spec.bytes_per_token
        values["bits_per_byte"] = loss_sum / math.log(2) / covered
    return {name: value.float() for name, value in values.items()}


def metric_names(spec: TaskSpec) -> list[str]:
    """The names `metrics_from_sums` gives for this task (per-group ones aside)."""
    names = ["loss"] + [m for m in spec.metrics if m != "position_acc"]
    if "position_acc" in spec.metrics:
        names += [f"acc/position_{i}" for i in range(spec.answer_length)]
    return names


class AnswerMetrics(Metric):
    """`answer_sums` summed over an evaluation pass (and across processes) -> the task's metrics and the loss.
    Every state is a sum, so the result over chunks (or DDP shards) equals the result over the whole split."""

    full_state_update = False

    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        self.group_names, self.n_positions = metric_layout(spec)
        self.register_buffer("token_bytes", token_bytes_of(spec), persistent=False)
        size = 6 + 4 * len(self.group_names) + self.n_positions + (spec.token_bytes is not None)
        self.add_state("sums", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, loss: Tensor, logits: Tensor, batch: Batch) -> None:
        self.sums += answer_sums(loss, logits, batch, len(self.group_names), self.n_positions, self.token_bytes)

    def compute(self) -> dict[str, Tensor]:
        return metrics_from_sums(self.sums, self.spec, self.group_names, self.n_positions)
