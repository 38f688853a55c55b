"""Keep a run's console about the run: drop library tips and warnings that say nothing about it."""
from __future__ import annotations

import logging
import warnings

_NOISE = (
    "💡 Tip:",  # Lightning advertising another logger
    "`weights_only` was not set",
)
_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*does not have many workers.*",
    r".*Checkpoint directory .* exists and is not empty.*",  # a resumed run writes into its own checkpoints/
    r".*overridden `transfer_batch_to_device` in `LightningModule`.*",  # ours: data is already on device
    r".*`training_step` returned `None`.*",  # ours, once the step is captured: its replay does the work
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE)


def quiet_library_noise() -> None:
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_DropNoise())
        logging.getLogger(name).addFilter(_DropNoise())
