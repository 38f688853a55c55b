"""How a run ended, in the words summary.json and `resume` use: completed, stopped_after_grokking, stopped_early
(an EarlyStopping callback ran out of patience), diverged, interrupted (with the signal) or failed (with the
error); and what a diverged run keeps."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.run.stop_request import stop_request
from core.errors import NonFiniteLossError, RunInterrupted
from runtime.lifecycle.summary import grok_summary


def fit_status(trainer: pl.Trainer, grok) -> dict[str, Any]:
    """After `fit` returned: completed, stopped early by an EarlyStopping callback, or because the run grokked."""
    status = "completed"
    if trainer.should_stop and trainer.global_step < trainer.max_steps:
        if any(cb.wait_count >= cb.patience for cb in trainer.early_stopping_callbacks):
            status = "stopped_early"
        elif grok is not None:
            status = "stopped_after_grokking"
    return {"status": status, "steps": trainer.global_step}


def ended_by(err: BaseException, trainer: pl.Trainer | None, grok) -> dict[str, Any]:
    """The status of a run that `err` ended: interrupted by a signal (with how far it got) or failed."""
    # under DDP the rank that received the signal may be another: RunInterrupted carries the one they agreed on
    stopped = (stop_request.signum or (err.signum if isinstance(err, RunInterrupted) else None)
               or (signal.SIGINT if isinstance(err, KeyboardInterrupt) else None))
    if stopped is None and not isinstance(err, SIGTERMException):
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    part: dict[str, Any] = {"status": "interrupted", "signal": signal.Signals(stopped or signal.SIGTERM).name}
    if trainer is not None:
        part |= {"steps": trainer.global_step} | grok_summary(grok)
    return part


def diverged(module: pl.LightningModule, out: Path, err: NonFiniteLossError,
             say: Callable[[str], None]) -> dict[str, Any]:
    """After a non-finite loss the net holds the weights after the last good step: save them when finite (the main
    process only: under DDP every rank holds the same weights and stops at the same step)."""
    part: dict[str, Any] = {"status": "diverged", "error": str(err), "steps": err.step}
    finite = all(torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point())
    last = out / "checkpoints" / "last.ckpt"
    if finite:
        path = out / "checkpoints" / "last_finite.pt"
        if rank_zero_only.rank == 0:
            path.parent.mkdir(exist_ok=True)
            torch.save(module.net.state_dict(), path)  # the net's weights, as init.pt: usable as init_from
        say(f"{path.relative_to(out)} holds the weights after step {err.step}, the last finite ones"
            + ("; checkpoints/last.ckpt is the last state to resume from" if last.is_file() else ""))
        return part | {"last_finite_weights": str(path.relative_to(out))}
    say("the weights are not finite; "
        + ("checkpoints/last.ckpt holds the last checkpointed ones" if last.is_file() else
           "no checkpoint was written before; init.pt holds the initial weights"))
    return part | {"last_finite_weights": str(last.relative_to(out)) if last.is_file() else None}
