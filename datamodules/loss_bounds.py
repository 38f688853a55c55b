"""The lowest loss a model can reach on modular arithmetic, so a loss curve can be read against it (the conditions-for-grokking study).

The loss is the masked mean cross-entropy of `GrokkingModule` over every equation of the task. Its minimum is
the conditional entropy of each target given the tokens before it, averaged over the positions the loss takes.

`sequence` format: inputs [BOS, a, OP, b, EQ, c, EOS], targets [a, OP, b, EQ, c, EOS, EOS] (7 positions;
see `ModularArithmetic._encode`). Over all equations, a is uniform and b is uniform given (a, OP), so:

    position  target  given             entropy (nats)
    0         a       BOS               ln p                       a is any residue
    1         OP      BOS a             H(OP) = ln n_ops            0 for a single operation
    2         b       BOS a OP          ln p  (ln(p-1) for div)     b is any residue (div leaves b = 0 out)
    3         EQ      ... b             0
    4         c       ... EQ            0 if the rule is known, ln p for a uniform guess over the residues
    5, 6      EOS     ...               0

With the loss on all 7 positions (`loss_on: all`) and a single operation without b = 0 left out:
generalising = 2·ln p / 7 (a model that knows the rule: only a and b cost anything), random answer =
3·ln p / 7 (the same model guessing c uniformly). p = 97: 1.307 and 1.961. Several operations add H(OP)/7,
which is ln(n_ops)/7 when every operation has the same number of pairs (with div among them the operation
frequencies are p or p-1 pairs per a, and H(OP) and the b term are weighted accordingly). With the loss on the
answer only (`loss_on: answer`, and always for `tokens` and `onehot`, whose inputs hold a, OP and b):
generalising = 0 and random answer = ln p.

These are population bounds: a finite train split has fewer b per a than p, so a model can go *below*
`generalising` on train with the all-position loss by memorising which operands occur (the conditions-for-grokking study's run 7:
train 1.057 < 1.307), while no model can beat it in expectation on held-out equations.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from core.errors import require
from datamodules.batch import FORMATS
from datamodules.operations import OPERATIONS

SEQUENCE_POSITIONS = 7  # targets [a, OP, b, EQ, c, EOS, EOS]


class LossBounds(NamedTuple):
    generalising: float  # the irreducible loss: the answer is known, only unpredictable tokens cost anything
    random_answer: float  # the same, but the answer guessed uniformly over the p residues


def sequence_entropies(p: int, operations: Sequence[str] = ("add",)) -> tuple[float, ...]:
    """The entropy (nats) of each of the 7 sequence targets given its prefix, for a model that knows the rule."""
    pairs_per_a = [p - 1 if OPERATIONS[name].nonzero_b else p for name in operations]  # b choices per (a, OP)
    total = sum(pairs_per_a)
    op_probs = [n / total for n in pairs_per_a]  # P(OP | a): the same for every a
    op_entropy = -sum(q * math.log(q) for q in op_probs)
    b_entropy = sum(q * math.log(n) for q, n in zip(op_probs, pairs_per_a))
    return (math.log(p), op_entropy, b_entropy, 0.0, 0.0, 0.0, 0.0)


def loss_bounds(p: int, format: str, loss_on: str = "answer",
                operations: Sequence[str] = ("add",)) -> LossBounds:
    """The generalising and random-answer loss for the task `ModularArithmetic(p, operations, format, loss_on)`."""
    operations = [operations] if isinstance(operations, str) else list(operations)
    require(isinstance(p, int) and not isinstance(p, bool) and p >= 2, "p", p, "an integer >= 2")
    require(format in FORMATS, "format", format, f"one of {', '.join(FORMATS)}")
    require(loss_on in ("answer", "all"), "loss_on", loss_on, "answer, all")
    require(loss_on == "answer" or format == "sequence", "loss_on", loss_on, "'answer' unless format=sequence")
    require(len(operations) >= 1 and all(name in OPERATIONS for name in operations), "operations", operations,
            f"a non-empty list of {', '.join(OPERATIONS)}")
    guess = math.log(p)
    if loss_on == "answer":
        return LossBounds(generalising=0.0, random_answer=guess)
    known = sum(sequence_entropies(p, operations)) / SEQUENCE_POSITIONS
    return LossBounds(generalising=known, random_answer=known + guess / SEQUENCE_POSITIONS)


PHASES = ("memorising", "generalising", "at_bound")


def classify_phase(train_loss: float, val_loss: float, bounds: LossBounds, tol: float = 0.05) -> str:
    """Where a run stands, from its train and val loss against `bounds` (checked in this order):

    - `at_bound`: train and val are both within `tol` of `bounds.generalising`: the rule is learned and nothing
      beyond it (a train loss below the bound by more than `tol` means operand statistics were memorised too).
    - `generalising`: val < `random_answer - tol`: held-out answers are predicted better than a uniform guess.
    - `memorising`: otherwise: held-out answers are no better than a guess. Training that fits the train split
      while val stays here is memorisation; an untrained net (train ≈ val ≥ random_answer) lands here too,
      and its train loss tells it apart.
    """
    require(isinstance(tol, (int, float)) and tol >= 0, "tol", tol, "a number >= 0")
    generalising, random_answer = bounds
    if abs(train_loss - generalising) <= tol and abs(val_loss - generalising) <= tol:
        return "at_bound"
    if val_loss < random_answer - tol:
        return "generalising"
    return "memorising"
