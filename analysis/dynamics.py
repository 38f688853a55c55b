"""Name a run's training dynamics from its accuracy curves, with the categories of the conditions-for-grokking study.

Answer accuracy is read on train and validation; t_fit is the first step train accuracy reaches `fit` (0.99),
t_gen the first step validation accuracy reaches `generalised` (0.95). In order:

| label | rule |
|---|---|
| oscillation | val acc reached `generalised` and later fell below `collapse` (0.5) again, or swung across 0.5 at least `swings` times |
| grokking | val acc reached `generalised` at least `delay` x t_fit steps *and* `min_gap` steps after train acc reached `fit` (delayed generalisation) |
| instant generalisation | val acc reached `generalised` without such a delay |
| partial generalisation | not generalised, final val acc >= `collapse` |
| memorisation | train acc reached `fit`, val acc stayed below `collapse` |
| not fitted | train acc never reached `fit` |

Thresholds are arguments so a study can state its own; the defaults are what the analysis table uses.
"""
from __future__ import annotations

from typing import Sequence

LABELS = ("oscillation", "grokking", "instant generalisation", "partial generalisation", "memorisation",
          "not fitted")


def first_step(curve: Sequence[tuple[int, float]], threshold: float) -> int | None:
    return next((step for step, value in curve if value >= threshold), None)


def classify_dynamics(
    train_acc: Sequence[tuple[int, float]],
    val_acc: Sequence[tuple[int, float]],
    fit: float = 0.99,
    generalised: float = 0.95,
    collapse: float = 0.5,
    delay: float = 1.0,
    min_gap: int = 200,
    swings: int = 4,
) -> str:
    """train_acc, val_acc: (step, accuracy) pairs in step order."""
    if not val_acc:
        return "not fitted"
    t_fit, t_gen = first_step(train_acc, fit), first_step(val_acc, generalised)
    crossings = sum((a >= collapse) != (b >= collapse) for (_, a), (_, b) in zip(val_acc, val_acc[1:]))
    if crossings >= swings:
        return "oscillation"
    if t_gen is not None:
        if any(value < collapse for step, value in val_acc if step > t_gen):
            return "oscillation"
        if t_fit is not None and t_gen - t_fit >= max(delay * t_fit, min_gap):
            return "grokking"
        return "instant generalisation"
    if val_acc[-1][1] >= collapse:
        return "partial generalisation"
    return "memorisation" if t_fit is not None else "not fitted"
