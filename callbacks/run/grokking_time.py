"""Records when a run memorises and when it generalises, logs them under `grok/`, and can stop after grokking.

A threshold's step is the number of optimiser updates the measured weights had (as `max_steps` and checkpoints
count steps), at the first *measured* point it is reached; train and validation thresholds count alike, so the
same weights give the same step. Train accuracy comes from the forward of a training step, before that step's
update: the one logged after s + 1 steps (`trainer.log_every_n_steps`) belongs to the weights after s updates.
Validation after n steps (`val_check_interval`) measures the weights after n updates. Loggers index rows by
Lightning's 0-based step (steps done - 1), so a `grok/...` value is logged on the row of the metric that crossed
the threshold: a train threshold reached at step s on row s, a validation one reached at n on row n - 1.

Where a task with sequence targets has theoretical loss bounds (`datamodule.loss_bounds()`, the
conditions-for-grokking study), they are
logged once at the start (`grok/loss_bound/<name>`) and every validation classifies the run against them from the
latest train and val loss (`datamodules.loss_bounds.classify_phase`: memorising, generalising or at_bound); the last
classification is `phase`, and it goes into summary.json as `loss_phase`.
"""
from __future__ import annotations

from typing import Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from core.errors import require
from datamodules.loss_bounds import LossBounds, classify_phase
from lightning_modules.cadence import is_log_step


def threshold_key(split: str, threshold: float, metric: str = "acc") -> str:
    return f"grok/{split}_{metric}_{threshold:g}_step"


def task_loss_bounds(datamodule: Any) -> dict[str, float] | None:
    """The task's theoretical loss bounds where they say something: tasks that offer `loss_bounds()` and whose
    targets have several positions (for answer-only tasks the bounds are 0 and ln(classes))."""
    if not callable(getattr(datamodule, "loss_bounds", None)) or datamodule.examples("train", 1).targets.shape[1] == 1:
        return None
    return datamodule.loss_bounds()


class GrokkingTime(Callback):
    def __init__(
        self,
        train_threshold: float = 0.99,
        val_thresholds: Sequence[float] = (0.5, 0.9, 0.95, 0.99),
        grokked_threshold: float = 0.99,
        stop_after_steps: int | None = None,
        metric: str = "acc",
    ):
        """metric: the task metric the thresholds apply to, read as `train/<metric>` and `val/<metric>` (`acc`;
        `exact_match` where an answer is several tokens)."""
        thresholds = [train_threshold, *val_thresholds, grokked_threshold]
        require(all(0 < t <= 1 for t in thresholds), "val_thresholds", list(val_thresholds), "numbers in (0, 1]")
        require(stop_after_steps is None or (isinstance(stop_after_steps, int) and stop_after_steps >= 0),
                "stop_after_steps", stop_after_steps, "null or an integer >= 0")
        self.train_threshold = train_threshold
        self.val_thresholds = sorted(set(val_thresholds) | {grokked_threshold})
        self.grokked_threshold = grokked_threshold
        self.stop_after_steps = stop_after_steps
        require(isinstance(metric, str) and metric.replace("_", "").isalnum(), "metric", metric,
                "the name of an accuracy-like task metric (acc, exact_match)")
        self.metric = metric
        self._train_key = threshold_key("train", train_threshold, metric)  # read every step: named once
        self._grokked_key = threshold_key("val", grokked_threshold, metric)
        self.steps: dict[str, int | None] = {self._train_key: None}
        self.steps |= {threshold_key("val", t, metric): None for t in self.val_thresholds}
        self.bounds: LossBounds | None = None
        self.phase: str | None = None

    @property
    def grokked_step(self) -> int | None:
        return self.steps[self._grokked_key]

    def _log(self, trainer: pl.Trainer, reached: dict[str, int]) -> None:
        """On the current row (steps done - 1): the row of the metric that reached the thresholds."""
        for key, step in reached.items():
            for logger in trainer.loggers:
                logger.log_metrics({key: step}, step=trainer.global_step - 1)

    # The rules, apart from Lightning: an ensemble keeps one GrokkingTime per member and calls these directly.
    def set_bounds(self, bounds: dict[str, float]) -> dict[str, float]:
        """Adopt the task's loss bounds; returns them under their metric names, to log once."""
        self.bounds = LossBounds(bounds["generalising"], bounds["random answer"])
        return {"grok/loss_bound/generalising": self.bounds.generalising,
                "grok/loss_bound/random_answer": self.bounds.random_answer}

    def record_train(self, step: int, acc: float) -> dict[str, int]:
        """Train accuracy of the weights after `step` optimiser updates (the forward of step `step` + 1)
        -> the thresholds first reached {key: step}."""
        key = threshold_key("train", self.train_threshold, self.metric)
        if self.steps[key] is None and acc >= self.train_threshold:
            self.steps[key] = step
            return {key: step}
        return {}

    def record_val(self, step: int, acc: float, train_loss: float | None = None,
                   val_loss: float | None = None) -> dict[str, int]:
        """Validation of the weights after `step` optimiser updates -> the thresholds first reached; updates the
        loss phase."""
        reached = {}
        for threshold in self.val_thresholds:
            key = threshold_key("val", threshold, self.metric)
            if self.steps[key] is None and acc >= threshold:
                self.steps[key] = reached[key] = step
        if self.bounds is not None and train_loss is not None and val_loss is not None:
            self.phase = classify_phase(train_loss, val_loss, self.bounds)
        return reached

    def should_stop(self, step: int) -> bool:
        """True once `stop_after_steps` steps have passed since grokking."""
        grokked = self.grokked_step
        return self.stop_after_steps is not None and grokked is not None and step >= grokked + self.stop_after_steps

    # Lightning glue
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bounds = task_loss_bounds(trainer.datamodule)
        if bounds is None:
            return
        values = self.set_bounds(bounds)
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.steps[self._train_key] is None and is_log_step(step, trainer):
            acc = trainer.callback_metrics.get(f"train/{self.metric}")
            if acc is not None:  # measured before this step's update: the weights after step - 1 updates
                self._log(trainer, self.record_train(step - 1, float(acc)))
        if self.should_stop(step):
            trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        if f"val/{self.metric}" not in metrics:
            return
        losses = [float(metrics[k]) if k in metrics else None for k in ("train/loss", "val/loss")]
        self._log(trainer, self.record_val(trainer.global_step, float(metrics[f"val/{self.metric}"]), *losses))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": dict(self.steps), "phase": self.phase}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps.update(state_dict["steps"])
        self.phase = state_dict.get("phase")
