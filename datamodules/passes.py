"""How a text task reads its text, said once at the start of training where it is not what the settings suggest: a run
that passes over its training split many times (a language model can memorise it, and a comparison of architectures
then measures memorisation), and an evaluation on fewer fixed windows than `eval_windows` asks (a split too short for
them all holds as many as fit)."""
from __future__ import annotations

from typing import Mapping

from datamodules.batch import Batch


def passes_warning(train_tokens: int, max_steps: int | None, tokens_per_step: int, limit: float) -> str | None:
    """The warning for a run that would read its `train_tokens` more than `limit` times, else None."""
    if max_steps is None or max_steps <= 0 or train_tokens <= 0:
        return None
    passes = max_steps * tokens_per_step / train_tokens
    if passes <= limit:
        return None
    return (f"warning: {max_steps} steps of {tokens_per_step:,} tokens pass {passes:.1f} times over the "
            f"{train_tokens:,} training tokens (more than {limit:g}): the net can memorise the split; a larger "
            f"corpus (data=lm data.corpus=package) or fewer steps avoid it")


def windows_note(asked: int, fitted: dict[str, int], seq_len: int) -> str | None:
    """The note for evaluation splits that hold fewer than `asked` windows of seq_len + 1 tokens, else None."""
    short = {split: count for split, count in fitted.items() if 0 < count < asked}
    if not short:
        return None
    held = ", ".join(f"{split} {count}" for split, count in short.items())
    return (f"note: data.eval_windows={asked}, but only {held} windows of seq_len + 1 = {seq_len + 1:,} tokens fit: "
            f"evaluating on those")


EVAL_SPLITS = ("val", "test")


def warn_at_fit(trainer, train_tokens: int, batch_size: int, seq_len: int, limit: float,
                eval_windows: int | None = None, splits: Mapping[str, Batch] | None = None) -> None:
    """Print the warnings, once (rank 0), for a run about to fit with `trainer`: passes over the train split, and
    (given the `eval_windows` asked and the task's fixed `splits`) evaluation splits short of windows."""
    if trainer is None or not trainer.is_global_zero:
        return
    per_step = batch_size * seq_len * max(1, int(trainer.accumulate_grad_batches or 1))
    fitted = {name: len(splits[name].inputs) for name in EVAL_SPLITS if name in splits} if splits else {}
    for line in (passes_warning(train_tokens, trainer.max_steps, per_step, limit),
                 windows_note(eval_windows, fitted, seq_len) if eval_windows else None):
        if line:
            print(f"[grokking-lab] {line}", flush=True)
