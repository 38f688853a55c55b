"""Answer metrics and greedy decoding against hand-computed values and independent loops."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import vmap

from core.output import NetOutput
from datamodules.batch import Batch, TaskSpec
from lightning_modules.answers import AnswerMetrics, answer_sums, metric_names, metrics_from_sums, task_loss
from lightning_modules.decoding import greedy_logits

SPEC = TaskSpec(num_classes=5, vocab_size=5, seq_len=4, group_names=("g0", "g1"),
                metrics=("acc", "exact_match", "position_acc"), answer_length=2)


def digit_batch() -> tuple[Batch, torch.Tensor]:
    """4 examples, 4 target positions, answers at positions 1 and 2; logits whose argmax is given by `pred`."""
    targets = torch.tensor([[1, 2, 3, 4], [0, 1, 1, 0], [4, 4, 2, 2], [3, 0, 0, 1]])
    pred = torch.tensor([[0, 2, 3, 0],   # both answer tokens right
                         [0, 1, 0, 0],   # second wrong
                         [4, 0, 0, 2],   # both wrong
                         [0, 0, 0, 0]])  # both right (non-answer positions wrong)
    answer = torch.zeros(4, 4, dtype=torch.bool)
    answer[:, 1:3] = True
    loss_mask = answer.float()
    batch = Batch(torch.zeros(4, 4, dtype=torch.long), targets, loss_mask, answer, torch.tensor([0, 0, 1, 1]))
    return batch, torch.nn.functional.one_hot(pred, 5).float() * 3.0


def test_metrics_equal_hand_counts():
    batch, logits = digit_batch()
    loss, _ = task_loss(NetOutput(logits=logits), batch)
    metric = AnswerMetrics(SPEC)
    metric.update(loss, logits, batch)
    values = {k: v.item() for k, v in metric.compute().items()}
    assert values["acc"] == pytest.approx(5 / 8)
    assert values["exact_match"] == pytest.approx(2 / 4)
    assert values["acc/position_0"] == pytest.approx(3 / 4) and values["acc/position_1"] == pytest.approx(2 / 4)
    assert values["acc/g0"] == pytest.approx(3 / 4) and values["acc/g1"] == pytest.approx(2 / 4)
    assert values["exact_match/g0"] == pytest.approx(1 / 2) and values["exact_match/g1"] == pytest.approx(1 / 2)
    # the loss is the mean cross-entropy over the 8 loss positions
    ce = torch.nn.functional.cross_entropy(logits[:, 1:3].reshape(-1, 5), batch.targets[:, 1:3].reshape(-1))
    assert values["loss"] == pytest.approx(ce.item(), rel=1e-6)
    assert set(metric_names(SPEC)) <= set(values)


def test_chunks_sum_to_the_whole():
    batch, logits = digit_batch()
    whole, chunked = AnswerMetrics(SPEC), AnswerMetrics(SPEC)
    whole.update(task_loss(NetOutput(logits=logits), batch)[0], logits, batch)
    for part in (slice(0, 1), slice(1, 4)):
        sub = Batch(*(t[part] for t in batch))
        chunked.update(task_loss(NetOutput(logits=logits[part]), sub)[0], logits[part], sub)
    for name, value in whole.compute().items():
        assert chunked.compute()[name].item() == pytest.approx(value.item(), rel=1e-6), name


def test_sums_under_vmap_equal_a_loop():
    batch, logits = digit_batch()
    members = torch.stack([logits, logits.flip(0), torch.randn_like(logits)])

    def member(member_logits):
        loss, aligned = task_loss(NetOutput(logits=member_logits), batch)
        return answer_sums(loss, aligned, batch, 2, 2)

    stacked = vmap(member)(members)
    for i, row in enumerate(stacked):
        assert torch.allclose(row, member(members[i]))


def test_language_model_metrics():
    spec = TaskSpec(num_classes=5, metrics=("perplexity", "bits_per_byte"))
    sums = torch.tensor([2.0 * 10, 10, 0, 10, 0, 5], dtype=torch.float64)  # mean loss 2 nats over 10 tokens
    values = metrics_from_sums(sums, spec, (), 0)
    assert values["perplexity"].item() == pytest.approx(math.exp(2.0), rel=1e-6)
    assert values["bits_per_byte"].item() == pytest.approx(2.0 / math.log(2), rel=1e-6)
    assert "acc" not in values


class CopyPlusOne(nn.Module):
    """A causal next-token rule: predicts (previous input token + 1) mod V at every position; `wrong_at` makes
    position `wrong_at` predict 0 instead, so greedy decoding carries that error forward and teacher forcing
    does not."""

    def __init__(self, vocab: int, wrong_at: int | None = None):
        super().__init__()
        self.vocab, self.wrong_at = vocab, wrong_at

    def forward(self, tokens):
        pred = (tokens + 1) % self.vocab
        if self.wrong_at is not None:
            pred[:, self.wrong_at] = 0
        return NetOutput(logits=torch.nn.functional.one_hot(pred, self.vocab).float())


def counting_batch(vocab: int = 10) -> Batch:
    seq = torch.stack([torch.arange(s, s + 6) % vocab for s in range(vocab)])  # each row counts up by one
    answer = torch.zeros(vocab, 5, dtype=torch.bool)
    answer[:, 2:] = True  # prompt: the first 3 tokens; answer: the last 3
    return Batch(seq[:, :-1], seq[:, 1:], answer.float(), answer, torch.zeros(vocab, dtype=torch.long))


def test_greedy_equals_teacher_forcing_on_a_correct_net():
    batch = counting_batch()
    net = CopyPlusOne(10)
    teacher = net(batch.inputs).logits.argmax(-1)
    assert torch.equal(teacher, batch.targets)
    assert torch.equal(greedy_logits(net, batch).argmax(-1), teacher)


def test_greedy_feeds_back_its_own_errors():
    batch = counting_batch()
    net = CopyPlusOne(10, wrong_at=2)  # the first answer token is always 0
    teacher = net(batch.inputs).logits.argmax(-1)
    greedy = greedy_logits(net, batch).argmax(-1)
    assert torch.equal(teacher[:, 3:], batch.targets[:, 3:])  # teacher forcing: later tokens still right
    assert torch.equal(greedy[:, 2], torch.zeros(10, dtype=torch.long))
    assert torch.equal(greedy[:, 3], torch.ones(10, dtype=torch.long))  # 0 + 1, from its own output
    assert torch.equal(greedy[:, 4], torch.full((10,), 2))


def test_the_module_reads_answers_as_the_task_decodes_them():
    from lightning_modules import AdamWRecipe, TaskModule

    batch = counting_batch()
    net = CopyPlusOne(10, wrong_at=2)
    for decoding in ("teacher_forced", "greedy"):
        spec = TaskSpec(num_classes=10, vocab_size=10, seq_len=5, metrics=("acc", "exact_match", "position_acc"),
                        decoding=decoding, answer_length=3)
        module = TaskModule(net, spec, AdamWRecipe())
        module.net.register_parameter("w", nn.Parameter(torch.zeros(1)))  # evaluate() asks for the device
        values = module.evaluate([batch])
        # the first answer token is 0, right only in the row that counts 7, 8, 9, 0, ...: teacher forcing gets the
        # later tokens right anyway; greedily, 0 is fed back and the error runs through the whole answer
        assert values["exact_match"] == pytest.approx(0.1)
        expected = [0.1, 1.0, 1.0] if decoding == "teacher_forced" else [0.1, 0.1, 0.1]
        assert [values[f"acc/position_{i}"] for i in range(3)] == pytest.approx(expected)


def test_bits_per_byte_divide_the_summed_loss_by_the_bytes_the_targets_stand_for():
    """A hand-computed case: 4 ids standing for 1, 2, 3 and 0 bytes; uniform logits, so every position's loss is
    ln 4 nats = 2 bits. Targets [[0, 1, 2], [2, 3, 1]] with the last position of row 0 outside the loss: five targets
    count, 0 1 / 2 3 1, which stand for 1 + 2 + 3 + 0 + 2 = 8 bytes, so bits per byte = 5 * 2 / 8 = 1.25, while the
    loss per token stays ln 4 (perplexity 4). In two chunks the sums give the same."""
    spec = TaskSpec(num_classes=4, vocab_size=4, metrics=("perplexity", "bits_per_byte"), token_bytes=(1, 2, 3, 0))
    targets = torch.tensor([[0, 1, 2], [2, 3, 1]])
    loss_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    batch = Batch(torch.zeros(2, 3, dtype=torch.long), targets, loss_mask, loss_mask.bool(),
                  torch.zeros(2, dtype=torch.long))
    output = NetOutput(logits=torch.zeros(2, 3, 4, dtype=torch.float64))
    whole, chunked = AnswerMetrics(spec), AnswerMetrics(spec)
    whole.update(*task_loss(output, batch), batch)
    for rows in (slice(0, 1), slice(1, 2)):
        part = Batch(*(t[rows] for t in batch))
        chunked.update(*task_loss(NetOutput(logits=output.logits[rows]), part), part)
    for metric in (whole, chunked):
        values = metric.compute()
        assert values["bits_per_byte"].item() == pytest.approx(1.25, rel=1e-6)
        assert values["loss"].item() == pytest.approx(math.log(4), rel=1e-6)
        assert values["perplexity"].item() == pytest.approx(4.0, rel=1e-6)
    # without a table every id stands for `bytes_per_token` bytes: loss / ln 2 / bytes_per_token, as before
    plain = AnswerMetrics(TaskSpec(num_classes=4, metrics=("bits_per_byte",), bytes_per_token=2.0))
    plain.update(*task_loss(output, batch), batch)
    assert plain.compute()["bits_per_byte"].item() == pytest.approx(1.0, rel=1e-6)
