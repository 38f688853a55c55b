"""Loss bounds of the conditions-for-grokking study: the formulas, and an independent check by counting on the real encoded data."""
import math
from collections import Counter, defaultdict

import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from datamodules import ModularArithmetic
from datamodules.loss_bounds import LossBounds, classify_phase, loss_bounds


@pytest.mark.parametrize("p", [7, 97, 113])
def test_bounds_match_the_formulas(p):
    assert loss_bounds(p, "sequence", "all") == pytest.approx((2 * math.log(p) / 7, 3 * math.log(p) / 7))
    for fmt in ("sequence", "tokens", "onehot"):
        assert loss_bounds(p, fmt, "answer") == pytest.approx((0.0, math.log(p)))
    two_ops = loss_bounds(p, "sequence", "all", operations=["add", "mul"])
    assert two_ops == pytest.approx(((2 * math.log(p) + math.log(2)) / 7, (3 * math.log(p) + math.log(2)) / 7))
    assert loss_bounds(p, "sequence", "answer", operations=["add", "mul"]) == pytest.approx((0.0, math.log(p)))


def test_conditions_study_table_values_for_p_97():
    bounds = loss_bounds(97, "sequence", "all")
    assert isinstance(bounds, LossBounds)
    assert round(bounds.generalising, 3) == 1.307 and round(bounds.random_answer, 3) == 1.961


def counting_log_probs(batch, vocab):
    """(N, T, vocab) log-probabilities of the best predictor of each target from its prefix, built by counting
    how often each target follows each prefix in `batch`."""
    inputs, targets = batch.inputs, batch.targets
    n, t = targets.shape
    log_probs = torch.empty(n, t, vocab, dtype=torch.float64)
    for pos in range(t):
        counts = defaultdict(Counter)
        prefixes = [tuple(row) for row in inputs[:, : pos + 1].tolist()]
        for prefix, target in zip(prefixes, targets[:, pos].tolist()):
            counts[prefix][target] += 1
        for i, prefix in enumerate(prefixes):
            seen = counts[prefix]
            probs = torch.full((vocab,), 1e-30, dtype=torch.float64)
            for token, k in seen.items():
                probs[token] = k / sum(seen.values())
            log_probs[i, pos] = probs.log()
    return log_probs


def masked_cross_entropy(log_probs, batch):
    """Mean cross-entropy over the positions of the loss mask, as the module averages it."""
    n, t, vocab = log_probs.shape
    ce = F.nll_loss(log_probs.reshape(n * t, vocab), batch.targets.flatten(), reduction="none")
    mask = batch.loss_mask.flatten()
    return float((ce * mask).sum() / mask.sum())


def minimal_cross_entropy(batch, vocab):
    return masked_cross_entropy(counting_log_probs(batch, vocab), batch)


@pytest.mark.parametrize("p, operations", [(7, ["add"]), (11, ["sub"]), (7, ["add", "mul"]), (7, ["add", "div"]),
                                           (5, ["div"])])
def test_counting_on_every_equation_reaches_the_generalising_bound(p, operations):
    data = ModularArithmetic(p=p, operations=operations, format="sequence", loss_on="all")
    vocab = data.spec.vocab_size
    bound = loss_bounds(p, "sequence", "all", operations)
    assert minimal_cross_entropy(data.all, vocab) == pytest.approx(bound.generalising, rel=1e-9)
    if operations == ["add"]:
        assert bound.generalising == pytest.approx(2 * math.log(p) / 7)


def test_answer_only_counting_is_zero_and_a_uniform_answer_reaches_the_random_bound():
    p = 7
    answer_only = ModularArithmetic(p=p, format="sequence", loss_on="answer")
    assert minimal_cross_entropy(answer_only.all, answer_only.spec.vocab_size) == pytest.approx(0.0, abs=1e-12)
    # the counting model with its answer replaced by a uniform guess over the p residues
    for loss_on in ("all", "answer"):
        data = ModularArithmetic(p=p, format="sequence", loss_on=loss_on)
        log_probs = counting_log_probs(data.all, data.spec.vocab_size)
        guess = torch.full((data.spec.vocab_size,), math.log(1e-30), dtype=torch.float64)
        guess[:p] = -math.log(p)
        log_probs[:, 4] = guess  # the answer c (sequence format)
        assert masked_cross_entropy(log_probs, data.all) == pytest.approx(
            loss_bounds(p, "sequence", loss_on).random_answer, rel=1e-9)


def test_a_train_split_can_be_fit_below_the_population_bound():
    # fewer b per a on train: counting there memorises which operands occur (the conditions-for-grokking study's run 7, train < 1.307)
    data = ModularArithmetic(p=11, format="sequence", loss_on="all", train_fraction=0.5)
    fit = minimal_cross_entropy(data.splits["train"], data.spec.vocab_size)
    assert fit < loss_bounds(11, "sequence", "all").generalising - 0.05


@pytest.mark.parametrize("kwargs, key", [
    ({"p": 1, "format": "sequence"}, "p"), ({"p": 7, "format": "image"}, "format"),
    ({"p": 7, "format": "tokens", "loss_on": "all"}, "loss_on"), ({"p": 7, "format": "sequence", "loss_on": "x"},
                                                                   "loss_on"),
    ({"p": 7, "format": "sequence", "operations": ["pow"]}, "operations"),
])
def test_bad_arguments_name_the_setting(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        loss_bounds(**kwargs)


def test_phases_of_the_conditions_study_runs():
    bounds = loss_bounds(97, "sequence", "all")  # 1.307, 1.961
    assert classify_phase(1.057, 2.511, bounds, tol=0.1) == "memorising"  # run 7, wd = 0
    assert classify_phase(1.091, 1.384, bounds, tol=0.1) == "generalising"  # run 8: val near, train below
    assert classify_phase(1.30, 1.35, bounds, tol=0.1) == "at_bound"
    assert classify_phase(4.6, 4.6, bounds, tol=0.1) == "memorising"  # untrained: not better than a guess
    answer_only = loss_bounds(97, "sequence", "answer")  # 0, ln 97
    assert classify_phase(0.001, 0.03, answer_only, tol=0.05) == "at_bound"
    assert classify_phase(0.0, 2.0, answer_only, tol=0.05) == "generalising"
    assert classify_phase(0.0, math.log(97), answer_only, tol=0.05) == "memorising"
    with pytest.raises(ConfigError, match="^tol="):
        classify_phase(1.0, 1.0, bounds, tol=-1)
