"""A run's parts from its config: task, net, module, callbacks, loggers and trainer, wired to each other."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from callbacks import GrokkingTime, RunCheckpoint
from core.errors import require
from lightning_modules.answers import metric_names
from nets.parts.gated_deltanet import kernel_in_use
from runtime.config.build import build, build_net, configure_torch
from runtime.config.checks import check_run_settings
from runtime.lifecycle.init_weights import prepare_init
from runtime.lifecycle.parameters import count, parameter_lines
from runtime.lifecycle.resume import check_same_model, read_checkpoint
from runtime.logs.csv_logger import RunCSVLogger
from runtime.logs.loggers import wandb_identity


@dataclass
class RunParts:
    datamodule: Any
    module: pl.LightningModule
    trainer: pl.Trainer
    loggers: list = field(default_factory=list)
    grok: GrokkingTime | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # for summary.json: init fingerprint, device, GDN kernel, W&B


def assemble(cfg: DictConfig, out: Path, ckpt_path: str | None, say: Callable[[str], None]) -> RunParts:
    """Build everything a run needs, checking settings first and a checkpoint to resume from against the model;
    `say` prints the net's size (and which Gated DeltaNet kernel runs, for a net with GDN layers)."""
    check_run_settings(cfg)
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None
    start_step = checkpoint["global_step"] if checkpoint else 0
    configure_torch(cfg)
    datamodule = build(cfg.data, "data")
    evaluated = [f"{split}/{name}" for split in ("val", "test") for name in metric_names(datamodule.spec)]
    require(cfg.get("optimized_metric", "val/acc") in evaluated, "optimized_metric", cfg.get("optimized_metric"),
            f"one of this task's evaluation metrics: {', '.join(evaluated)}")
    require(cfg.get("optimized_mode", "max") in ("max", "min"), "optimized_mode", cfg.get("optimized_mode"),
            "max or min")
    pl.seed_everything(cfg.seed, workers=False, verbose=False)  # the model-init seed, apart from the split's
    net = build_net(cfg.model, datamodule.spec)
    facts: dict[str, Any] = {"parameters": count(net)}
    for line in parameter_lines(net):
        say(line)
    if checkpoint is None:  # a resumed run takes its weights from the checkpoint
        facts["init_fingerprint"] = prepare_init(net, out, cfg.get("init_from"), cfg.get("init_scale", 1.0))
    elif "init_fingerprint" in checkpoint:
        facts["init_fingerprint"] = checkpoint["init_fingerprint"]
    # objects are passed after instantiation: Hydra would turn dataclass arguments into configs
    make_module = build(cfg.module, "module", _partial_=True)
    graphed = bool(cfg.module.get("cuda_graph"))
    module = make_module(net=net, spec=datamodule.spec, optimizer=build(cfg.optimizer, "optimizer"),
                         regularizers=build(cfg.regularizer, "regularizer"),
                         **({"clip_grad_norm": cfg.trainer.get("gradient_clip_val")} if graphed else {}))
    if checkpoint is not None:
        check_same_model(checkpoint, module, ckpt_path)
        del checkpoint  # Lightning reads it again, whole
        facts["resumed_from_step"] = start_step
    callbacks = [build(node, f"callbacks.{name}") for name, node in cfg.callbacks.items() if node]
    loggers = [build(node, f"logger.{name}") for name, node in (cfg.logger or {}).items() if node]
    for logger in loggers:
        if isinstance(logger, RunCSVLogger):
            logger.keep_steps_before(start_step)  # rows past the checkpoint are logged again
    for callback in callbacks:
        if isinstance(callback, RunCheckpoint):
            callback.init_fingerprint = facts.get("init_fingerprint")
    # a captured step clips inside its graph (the module got the value); the trainer must not clip again
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                    default_root_dir=str(out), **({"gradient_clip_val": None} if graphed else {}))
    facts["device"] = str(trainer.strategy.root_device)
    if (kernel := kernel_in_use(net, trainer.strategy.root_device.type)) is not None:  # which GDN kernel runs
        say(f"GDN kernel: {kernel}")
        facts["gdn_kernel"] = kernel
    if callable(describe := getattr(datamodule, "corpus_info", None)):  # which text a language model trained on
        facts["corpus"] = describe().as_dict()
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if wandb_run := wandb_identity(loggers):
        facts["wandb"] = wandb_run
    grok = next((c for c in callbacks if isinstance(c, GrokkingTime)), None)
    return RunParts(datamodule, module, trainer, loggers, grok, facts)
