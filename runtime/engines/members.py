"""Which jobs can share an ensemble, and each member's host-side record: its run folder, loggers, grokking time,
status and summary, so that a member leaves the folder a solo run of its config leaves."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict

from core.errors import ConfigError
from runtime.lifecycle.job import Job

# What members of one ensemble may differ in: all of it acts through the initial weights or per-member numbers.
# (and each `regularizer.<name>.weight`, see packable_keys)
PACKABLE = ("seed", "init_scale", "init_from", "optimizer.lr", "optimizer.weight_decay", "optimizer.declared_lr")
# What a solo run of the config would use that an ensemble also honours (anything else must be off).
SUPPORTED_CALLBACKS = ("grokking_time", "checkpoint", "best_checkpoint", "progress", "finite_loss")
# default callbacks an ensemble leaves out: the members share each step, so a per-run speed means nothing there
LEFT_OUT_CALLBACKS = ("throughput",)
# precisions without a loss scaler: 16-mixed's one scaler would skip every member's step when one member's gradient
# overflows, and halve its scale for good while a diverged member's row stays non-finite
PRECISIONS = ("32-true", "32", "bf16-mixed")


def packable_keys(cfg: DictConfig) -> list[str]:
    return [*PACKABLE, *(f"regularizer.{name}.weight" for name in (cfg.get("regularizer") or {}))]


def shared_part(cfg: DictConfig) -> str:
    """The config without what members may differ in (nor Hydra's per-job node, nor the run folder), as text:
    jobs with equal shared parts can be trained as one ensemble."""
    shared = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("hydra", "paths")])
    with open_dict(shared):
        for key in packable_keys(cfg):
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(shared, parent) if parent else shared
            if node is not None and leaf in node:
                del node[leaf]
    return OmegaConf.to_yaml(shared, resolve=False)


def check_supported(cfg: DictConfig) -> None:
    """Refuse, by key, the settings an ensemble cannot honour."""
    for name, node in (cfg.get("callbacks") or {}).items():
        if node and name not in (*SUPPORTED_CALLBACKS, *LEFT_OUT_CALLBACKS):
            supported = ", ".join(SUPPORTED_CALLBACKS)
            raise ConfigError(f"callbacks.{name}", node.get("_target_"),
                              f"null in an ensemble (hydra/launcher=ensemble supports {supported})")
    if cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path", cfg.ckpt_path, "null in an ensemble (members start from their initial weights)")
    trainer = cfg.trainer
    if trainer.get("strategy") not in (None, "auto") or trainer.get("devices", 1) not in (1, "1", "auto"):
        raise ConfigError("trainer.strategy", trainer.get("strategy"), "one device in an ensemble (no DDP)")
    if trainer.get("accumulate_grad_batches", 1) != 1:
        raise ConfigError("trainer.accumulate_grad_batches", trainer.accumulate_grad_batches, "1 in an ensemble")
    if str(trainer.get("precision", "32-true")) not in PRECISIONS:
        raise ConfigError("trainer.precision", trainer.precision, "32-true or bf16-mixed in an ensemble (16-mixed's "
                          "loss scaler would skip every member's step when one member overflows)")


class Member(Job):
    """One job of an ensemble. The ensemble module tells it every measurement of its member; it logs what a solo
    run would log (same names, same rows), tracks its grokking time and knows when its member is done."""

    def __init__(self, cfg: DictConfig, out: Path, overrides: Sequence[str], loggers: Sequence[Logger],
                 shared: str | None = None):
        """shared: `shared_part` of the job's config before it was resolved (default: of `cfg`)."""
        super().__init__(cfg, out, overrides, loggers)
        self.shared = shared_part(cfg) if shared is None else shared
        self.out.mkdir(parents=True, exist_ok=True)
        self.status, self.steps, self.error = "running", None, None
        self.last_train_loss: float | None = None

    @property
    def training(self) -> bool:
        return self.status == "running"

    def log(self, metrics: dict[str, float], step: int, epoch: int = 0) -> None:
        for logger in self.loggers:
            logger.log_metrics({"epoch": epoch, **metrics}, step=step)

    def log_reached(self, reached: dict[str, int], row: int) -> None:
        for key, step in reached.items():
            self.log({key: step}, row)

    def train_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Training metrics of step `step` (logged on row step - 1, as Lightning does). They come from its forward,
        before its update: a train threshold reached there counts step - 1 updates, as a solo run's does."""
        if not self.training:
            return
        self.log(metrics, step - 1)
        self.last_train_loss = metrics["train/loss"]
        if self.grok is not None:
            self.log_reached(self.grok.record_train(step - 1, metrics[f"train/{self.grok.metric}"]), step - 1)

    def val_metrics(self, step: int, metrics: dict[str, float]) -> None:
        # a solo run that stops after grokking still validates if its last step is a validation step
        if not (self.training or (self.status == "stopped_after_grokking" and self.steps == step)):
            return
        self.log({f"val/{name}": value for name, value in metrics.items()}, step - 1)
        if self.grok is not None:
            reached = self.grok.record_val(step, metrics[self.grok.metric], self.last_train_loss, metrics["loss"])
            self.log_reached(reached, step - 1)
        for logger in self.loggers:
            logger.save()  # a crash later loses no logged row

    def should_stop(self, step: int) -> bool:
        return self.grok is not None and self.grok.should_stop(step)

    def stop(self, step: int, max_steps: int) -> None:
        """Grokked and patient long enough: its row is frozen from here on."""
        self.status, self.steps = ("stopped_after_grokking" if step < max_steps else "completed"), step

    def diverged(self, step: int, value: float) -> None:
        if self.training:
            self.status, self.steps = "diverged", step
            self.error = f"training loss is {value} at step {step}; stopped before applying it"

    def finish(self, step: int, interrupted: bool) -> None:
        if self.training:
            self.status, self.steps = ("interrupted" if interrupted else "completed"), step

    def save_weights(self, state: dict[str, torch.Tensor], step: int, ensemble: dict[str, Any]) -> None:
        """`checkpoints/last.ckpt` with the member's weights as a solo checkpoint's `state_dict` (`net.` prefix);
        weights only (no optimiser or loop state), so it is for analysis and `init_from`-style reuse."""
        folder = self.out / "checkpoints"
        folder.mkdir(exist_ok=True)
        tmp = folder / "last.ckpt.tmp"
        torch.save({"state_dict": {f"net.{k}": v.cpu() for k, v in state.items()}, "global_step": step,
                    "ensemble": ensemble}, tmp)
        tmp.replace(folder / "last.ckpt")
