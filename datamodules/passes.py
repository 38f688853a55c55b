"""How many times a run reads its training split: a language model that passes over its text many times can memorise
it, and a comparison of architectures then measures memorisation. Text tasks say so once, at the start of training."""
from __future__ import annotations


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


def warn_at_fit(trainer, train_tokens: int, batch_size: int, seq_len: int, limit: float) -> None:
    """Print the warning, once (rank 0), for a run about to fit with `trainer`."""
    if trainer is None or not trainer.is_global_zero:
        return
    per_step = batch_size * seq_len * max(1, int(trainer.accumulate_grad_batches or 1))
    if warning := passes_warning(train_tokens, trainer.max_steps, per_step, limit):
        print(f"[grokking-lab] {warning}", flush=True)
