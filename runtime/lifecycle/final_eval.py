"""The final numbers of a run: the task's metrics on every split that has data, of the last weights or of the best
checkpoint's (`final_weights: best`, for runs that early stopping ends after their best point)."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from callbacks.run.checkpoint import best_net_state
from core.errors import require
from runtime.lifecycle.summary import finite_or_null

FINAL_WEIGHTS = ("last", "best")


def final_metrics(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any,
                  weights: str = "last") -> dict[str, Any]:
    """{"final": `<split>/<metric>` over each split's fixed evaluation batches (`Task.eval_batches`), "final_precision",
    and with `best` which weights they are}, measured on the training device (Lightning moves the module back to the
    CPU when `fit` ends, while the data may stay on the GPU) and at the run's precision (the trainer's precision
    plugin's forward context, as validation ran: under bf16-mixed the final numbers are the logged and
    best-checkpoint values' kind, not an fp32 forward's). Loading the best weights happens after every checkpoint
    of the run was written, so `last.ckpt` still resumes where training stopped."""
    require(weights in FINAL_WEIGHTS, "final_weights", weights, " | ".join(FINAL_WEIGHTS))
    part: dict[str, Any] = {}
    if weights == "best" and (best := best_net_state(trainer)) is not None:
        module.net.load_state_dict(best[0])
        part["final_weights"] = {"from": "checkpoints/best.ckpt", "step": best[1]}
    module.to(trainer.strategy.root_device)
    with trainer.precision_plugin.forward_context():
        part["final"] = finite_or_null({f"{split}/{name}": value
                                        for split in datamodule.split_names()
                                        for name, value in module.evaluate(datamodule.eval_batches(split)).items()})
    return part | {"final_precision": str(trainer.precision)}
