"""The solo engine: one configuration, one net, a `TaskModule` and a trainer with the config's callbacks and
loggers. It resumes (`ckpt_path`, `resume`), honours stop signals at a step boundary, runs under DDP and the captured
CUDA-graph step, and can take its final numbers from the best checkpoint (`final_weights: best`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from torch import nn

from callbacks.run.checkpoint import best_net_state
from callbacks.run.stop_request import stop_request
from core.errors import NonFiniteLossError, require, settings_of
from lightning_modules.task_module import TaskModule
from runtime.config.build import build, build_offering
from runtime.lifecycle.init_weights import prepare_init
from runtime.lifecycle.job import Job
from runtime.lifecycle.resume import check_same_model, read_checkpoint, starting_point
from runtime.lifecycle.run import Engine, evaluate_splits
from runtime.lifecycle.status import diverged, ended_by, fit_status
from runtime.lifecycle.summary import callback_parts, close_summary, finite_or_null, grok_summary

FINAL_WEIGHTS = ("last", "best")


def hydra_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


class SoloEngine(Engine):
    def __init__(self, cfg: DictConfig):
        out = Path(cfg.paths.output_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
        super().__init__([Job(cfg, out, hydra_overrides())])
        self.job = self.jobs[0]
        self.say(f"run folder: {out}")
        # where it starts: a checkpoint, its own folder's (resume), or fresh; a finished run is not trained again
        self.ckpt_path, self.finished = starting_point(out, cfg.ckpt_path, bool(cfg.get("resume")), self.say)
        self.checkpoint: dict[str, Any] | None = None

    def say(self, line: str) -> None:
        if rank_zero_only.rank == 0:  # DDP: only the main process speaks
            super().say(line)

    def check(self) -> None:
        self.job.summary["status"] = "running"
        require(self.job.cfg.get("final_weights", "last") in FINAL_WEIGHTS, "final_weights",
                self.job.cfg.get("final_weights"), " | ".join(FINAL_WEIGHTS))
        if self.ckpt_path:
            self.checkpoint = read_checkpoint(self.ckpt_path)
            self.job.summary["resumed_from_step"] = self.checkpoint["global_step"]

    def initial_weights(self, job: Job, net: nn.Module) -> str | None:
        if self.checkpoint is None:
            return prepare_init(net, job.out, job.cfg.get("init_from"), job.cfg.get("init_scale", 1.0))
        return self.checkpoint.get("init_fingerprint")  # a resumed run takes its weights from the checkpoint

    def module(self, nets: Sequence[nn.Module], datamodule: Any) -> pl.LightningModule:
        cfg = self.job.cfg
        # objects are passed after instantiation: Hydra would turn dataclass arguments into configs
        optimizer, regularizers = build(cfg.optimizer, "optimizer"), build(cfg.regularizer, "regularizer")
        with settings_of("module"):  # its own settings (module.cuda_graph) named under their group
            module = build(cfg.module, "module", _partial_=True)(
                net=nets[0], spec=datamodule.spec, optimizer=optimizer, regularizers=regularizers,
                init_fingerprint=self.job.summary.get("init_fingerprint"))
        if self.checkpoint is not None:
            check_same_model(self.checkpoint, module, self.ckpt_path)
            self.checkpoint = None  # Lightning reads it again, whole
        return module

    def trainer(self, module: pl.LightningModule, datamodule: Any) -> pl.Trainer:
        cfg, job = self.job.cfg, self.job
        start_step = job.summary.get("resumed_from_step", 0)
        # the run's grokking time is the job's (its summary reads it); every other callback as configured
        callbacks = [job.grok if name == "grokking_time" else build(node, f"callbacks.{name}")
                     for name, node in cfg.callbacks.items() if node]
        # the CSV logger drops the rows a resumed run logs again
        job.loggers = [build_offering(node, f"logger.{name}", start_step=start_step)
                       for name, node in (cfg.logger or {}).items() if node]
        return build(cfg.trainer, "trainer", callbacks=callbacks, logger=job.loggers or False,
                     default_root_dir=str(job.out))

    def fit(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any) -> None:
        job = self.job
        stop_request.install()  # SIGINT / SIGTERM: stop at the next step boundary (RunCheckpoint); `close` gives back
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=self.ckpt_path)
            job.summary |= fit_status(trainer, job.grok)
            if datamodule.has_test:
                trainer.test(module, datamodule=datamodule, verbose=False)
        except NonFiniteLossError as err:  # the weights are those after the last good step
            job.summary |= diverged(module, job.out, err, self.say)
        finally:
            if (status := module.cuda_graph_status) is not None:  # whether the step was captured, or why not
                job.summary["cuda_graph"] = status

    def final_numbers(self, trainer: pl.Trainer, module: TaskModule, datamodule: Any) -> None:
        """The last weights' numbers, or with `final_weights: best` the best checkpoint's (loaded after every
        checkpoint of the run was written, so `last.ckpt` still resumes where training stopped), measured on the
        training device (Lightning moves the module back to the CPU when `fit` ends; the data may stay on a GPU)."""
        job = self.job
        if job.cfg.get("final_weights", "last") == "best" and (best := best_net_state(trainer)) is not None:
            module.net.load_state_dict(best[0])
            job.summary["final_weights"] = {"from": "checkpoints/best.ckpt", "step": best[1]}
        module.to(trainer.strategy.root_device)
        (final,) = evaluate_splits(lambda batches: [module.evaluate(batches)], datamodule, 1)
        job.summary |= {"final": finite_or_null(final)} | grok_summary(job.grok) | callback_parts(trainer.callbacks)

    def ended_by(self, err: BaseException, trainer: pl.Trainer | None) -> None:
        if self.job.summary["status"] in ("failed", "running"):
            self.job.summary |= ended_by(err, trainer, self.job.grok)

    def close(self, started: float) -> None:
        stop_request.restore()
        job, out = self.job, self.job.out
        job.summary["checkpoints"] = sorted(str(p.relative_to(out)) for p in (out / "checkpoints").glob("*.*")
                                            if p.suffix in (".ckpt", ".pt"))
        wall = close_summary(out, job.summary, job.loggers, started, write=rank_zero_only.rank == 0)
        self.say(f"{job.summary['status']} after {job.summary.get('steps', 0)} steps in {wall:.1f} s; outputs in {out}")
