"""A run's life, written once. A solo run and an ensemble are two engines behind it (runtime/engines/): they differ
only in how they hold the net(s), step them and read how each job ended; every other step is here, so a new fact
in summary.json, a new logger or a new check is added once and reaches both.

    check every job's settings, and what the engine cannot honour
    configure torch, build the task, check the judged metric
    per job: seed, build the net, initial weights (init.pt, fingerprint)      -> the engine's module and trainer
    facts every job's summary.json records (device, parameters, GDN kernel, corpus)
    per job: hyper-parameters to its loggers, its W&B run
    fit (the engine sets each job's status)
    final numbers of every split, at the run's precision
    per job, whatever happened: summary.json written, loggers closed, plots/grokking_curve.png drawn
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
from omegaconf import OmegaConf
from torch import nn

from core.errors import require
from datamodules.batch import TaskSpec
from lightning_modules.answers import metric_names
from nets.parts.gated_deltanet import kernel_in_use
from runtime.config.build import build, build_net, configure_torch
from runtime.config.checks import check_run_settings
from runtime.lifecycle.init_weights import prepare_init
from runtime.lifecycle.job import Job
from runtime.lifecycle.parameters import count, parameter_lines
from runtime.logs.loggers import wandb_identity
from runtime.logs.quiet import quiet_library_noise


class Engine(ABC):
    """How a run holds its net(s) and steps them. The life cycle (`live`) calls these in order."""

    vmapped = False  # whether the nets run under torch.func.vmap (it decides which Gated DeltaNet kernel runs)

    def __init__(self, jobs: Sequence[Job]):
        self.jobs = list(jobs)

    def say(self, line: str) -> None:
        print(f"[grokking-lab] {line}", flush=True)

    def check(self) -> None:
        """Refuse, by key, what this engine cannot honour (after every job's own settings were checked)."""

    def initial_weights(self, job: Job, net: nn.Module) -> str | None:
        """Load or scale `net`'s initial weights as `job` asks, save them as its init.pt; their fingerprint."""
        return prepare_init(net, job.out, job.cfg.get("init_from"), job.cfg.get("init_scale", 1.0))

    @abstractmethod
    def module(self, nets: Sequence[nn.Module], datamodule: Any) -> pl.LightningModule:
        """The LightningModule that trains `nets` (one per job)."""

    @abstractmethod
    def trainer(self, module: pl.LightningModule, datamodule: Any) -> pl.Trainer:
        """The trainer, with the callbacks and loggers this engine drives."""

    @abstractmethod
    def fit(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any) -> None:
        """Train (and test where the task has a test split); record how each job ended."""

    @abstractmethod
    def final_numbers(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any) -> None:
        """Each job's `final` numbers (see `evaluate_splits`) and what else its summary takes from the end."""

    @abstractmethod
    def ended_by(self, err: BaseException, trainer: pl.Trainer | None) -> None:
        """Record, for every job not yet ended, why the run stopped (a signal, an error)."""

    @abstractmethod
    def close(self, started: float) -> None:
        """Whatever happened: each job's summary.json written and its loggers' runs ended."""


@dataclass
class Parts:
    """What a run trains with, built by `assemble`."""

    datamodule: Any
    nets: list[nn.Module]
    module: pl.LightningModule
    trainer: pl.Trainer


def assemble(engine: Engine) -> Parts:
    """Check every job's settings and the engine's, then build the task, the nets (with their initial weights), the
    module and the trainer; record the facts every summary.json holds and start each job's loggers."""
    for job in engine.jobs:
        check_run_settings(job.cfg)
    engine.check()
    cfg = engine.jobs[0].cfg
    configure_torch(cfg)
    datamodule = build(cfg.data, "data")
    check_judged_metric(cfg, datamodule.spec)
    nets = [build_job_net(engine, job, datamodule.spec, say=engine.say if index == 0 else None)
            for index, job in enumerate(engine.jobs)]
    module = engine.module(nets, datamodule)
    trainer = engine.trainer(module, datamodule)
    facts = run_facts(nets[0], datamodule, trainer, engine.vmapped, engine.say)
    for job in engine.jobs:
        job.summary |= facts
        for logger in job.loggers:
            logger.log_hyperparams(OmegaConf.to_container(job.cfg, resolve=True))
        if wandb_run := wandb_identity(job.loggers):
            job.summary["wandb"] = wandb_run
    return Parts(datamodule, nets, module, trainer)


def live(engine: Engine) -> list[dict[str, Any]]:
    """Run `engine`'s jobs through the life cycle; returns their summaries (also written to their folders)."""
    started = time.time()
    quiet_library_noise()
    parts: Parts | None = None
    try:
        parts = assemble(engine)
        engine.fit(parts.trainer, parts.module, parts.datamodule)
        with parts.trainer.precision_plugin.forward_context():  # the run's precision, as its validation ran
            engine.final_numbers(parts.trainer, parts.module, parts.datamodule)
        for job in engine.jobs:
            job.summary["final_precision"] = str(parts.trainer.precision)
    except BaseException as err:  # keep what was written; record why the run ended
        engine.ended_by(err, parts.trainer if parts else None)
        raise
    finally:
        engine.close(started)
    return [job.summary for job in engine.jobs]


def check_judged_metric(cfg, spec: TaskSpec) -> None:
    """`optimized_metric` must be one the task evaluates, `optimized_mode` max or min."""
    evaluated = [f"{split}/{name}" for split in ("val", "test") for name in metric_names(spec)]
    require(cfg.get("optimized_metric", "val/acc") in evaluated, "optimized_metric", cfg.get("optimized_metric"),
            f"one of this task's evaluation metrics: {', '.join(evaluated)}")
    require(cfg.get("optimized_mode", "max") in ("max", "min"), "optimized_mode", cfg.get("optimized_mode"),
            "max or min")


def build_job_net(engine: Engine, job: Job, spec: TaskSpec, say: Callable[[str], None] | None) -> nn.Module:
    """`job`'s net from its own seed (apart from the data split's), with the initial weights the engine gives it;
    `say`: print its size."""
    pl.seed_everything(job.cfg.seed, workers=False, verbose=False)
    net = build_net(job.cfg.model, spec)
    job.summary["parameters"] = count(net)
    for line in (parameter_lines(net) if say else ()):
        say(line)
    if (fingerprint := engine.initial_weights(job, net)) is not None:
        job.summary["init_fingerprint"] = fingerprint
    return net


def run_facts(net: nn.Module, datamodule: Any, trainer: pl.Trainer, vmapped: bool,
              say: Callable[[str], None]) -> dict[str, Any]:
    """What every job's summary.json records about where and on what it trained."""
    facts: dict[str, Any] = {"device": str(trainer.strategy.root_device)}
    if (kernel := kernel_in_use(net, trainer.strategy.root_device.type, vmapped=vmapped)) is not None:
        say(f"GDN kernel: {kernel}")
        facts["gdn_kernel"] = kernel
    if callable(describe := getattr(datamodule, "corpus_info", None)):  # which text a language model trained on
        facts["corpus"] = describe().as_dict()
    return facts


def evaluate_splits(evaluate: Callable[[Any], list[dict[str, float]]], datamodule: Any,
                    jobs: int) -> list[dict[str, float]]:
    """Per job, `<split>/<metric>` of every split that has data, over the split's fixed evaluation batches
    (`Task.eval_batches`); `evaluate(batches)` gives one dict of metrics per job."""
    finals: list[dict[str, float]] = [{} for _ in range(jobs)]
    for split in datamodule.split_names():
        for index, metrics in enumerate(evaluate(datamodule.eval_batches(split))):
            finals[index] |= {f"{split}/{name}": value for name, value in metrics.items()}
    return finals


__all__ = ["Engine", "Parts", "assemble", "check_judged_metric", "evaluate_splits", "live"]
