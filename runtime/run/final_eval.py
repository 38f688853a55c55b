"""The final numbers of a run: the task's metrics of the last weights on every split that has data."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from runtime.run.summary import finite_or_null


def final_metrics(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any) -> dict[str, float | None]:
    """`<split>/<metric>` over each split's fixed evaluation batches (`Task.eval_batches`), on the training device
    (Lightning moves the module back to the CPU when `fit` ends, while the data may stay on the GPU)."""
    module.to(trainer.strategy.root_device)
    return finite_or_null({f"{split}/{name}": value
                           for split in datamodule.split_names()
                           for name, value in module.evaluate(datamodule.eval_batches(split)).items()})
