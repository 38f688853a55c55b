"""The one rule for which steps log training metrics, shared by the module and the callbacks that read them."""
from __future__ import annotations

import lightning.pytorch as pl


def is_log_step(steps_done: int, trainer: pl.Trainer) -> bool:
    """True when training metrics are logged after `steps_done` optimiser steps (Lightning's own cadence),
    and on the last step so the final values are always recorded."""
    every = trainer.log_every_n_steps
    return (every > 0 and steps_done % every == 0) or steps_done == trainer.max_steps
