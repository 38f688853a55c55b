"""Greedy autoregressive decoding of a task's answer: what the net says when it must read its own output.

Teacher-forced evaluation feeds the true previous answer tokens, so one wrong digit does not spoil the next; a
generated answer does. For next-token tasks (targets = inputs shifted by one) the answer token at target position
j is fed back as input position j + 1. On a net that is right everywhere both give the same logits' argmax.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from datamodules.batch import Batch, answer_columns
from lightning_modules.answers import aligned_logits


@torch.no_grad()
def greedy_logits(net: nn.Module, batch: Batch) -> Tensor:
    """(N, T, classes) logits aligned with the targets, where each answer position's logits come from a forward on
    the inputs with every earlier answer position replaced by the net's own argmax. Answer positions must be the
    same columns in every row (they are for the digit tasks)."""
    n_targets = batch.targets.shape[1]
    offset = batch.inputs.shape[1] - n_targets  # input position of target 0's prediction
    inputs = batch.inputs.clone()
    logits = aligned_logits(net(inputs), n_targets).clone()
    columns = answer_columns(batch.answer_mask).tolist()
    for i, j in enumerate(columns):
        if i:  # the first answer token is predicted from the prompt alone: the forward above
            logits[:, j] = aligned_logits(net(inputs), n_targets)[:, j]
        if offset + j + 1 < inputs.shape[1]:
            inputs[:, offset + j + 1] = logits[:, j].argmax(-1)
    return logits
