"""One configuration's run as the life cycle sees it, whichever engine trains it: its config, its folder, its loggers,
its grokking-time record and the summary it leaves (`summary.json`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from callbacks.run.grokking_time import GrokkingTime
from runtime.config.build import build


class Job:
    """`summary` starts as a failed run's and is completed as the run goes; `grok` (None when the config has no
    `callbacks.grokking_time`) is the run's grokking time: the solo engine hands it to the trainer as a callback,
    an ensemble tells it each member's numbers."""

    def __init__(self, cfg: DictConfig, out: str | Path, overrides: Sequence[str], loggers: Sequence[Logger] = ()):
        self.cfg, self.out, self.overrides, self.loggers = cfg, Path(out), list(overrides), list(loggers)
        node = (cfg.get("callbacks") or {}).get("grokking_time")
        self.grok: GrokkingTime | None = build(node, "callbacks.grokking_time") if node else None
        self.summary: dict[str, Any] = {"status": "failed", "experiment": cfg.get("name"), "seed": cfg.seed,
                                        "overrides": self.overrides, "run_dir": str(self.out)}
