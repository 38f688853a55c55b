"""The ensemble engine: the members of one ensemble (jobs whose configs differ only in packable values) trained in one
process, their weights one (members x parameters) tensor stepped under torch.func.vmap (`EnsembleModule`).

Every member gets what a solo run of its config gets from the life cycle: its initial weights from its own seed
(saved as `init.pt`, fingerprinted), its loggers (`metrics.csv` rows under the same names and steps, W&B in its sweep
group), its grokking time, and a `summary.json` with its own status, steps and final metrics, written whatever
happens to the process. What differs: the trainer logs nothing itself (each member's record logs its own rows), and
a member ends on its own (diverged, or stopped after grokking) while the others go on. SIGINT or SIGTERM ends the
step under way; every member still training is then `interrupted` (with the signal), with its final numbers, its
weights in `checkpoints/last.ckpt` and its summary.json.
"""
from __future__ import annotations

import signal
import time
from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn

from callbacks.run.grokking_time import task_loss_bounds
from callbacks.run.stop_request import StopAtStepBoundary, stop_request
from core.errors import ConfigError, settings_of
from lightning_modules.ensemble_module import EnsembleModule
from regularizers.base import Regularizer
from runtime.config.build import build
from runtime.engines.members import Member, check_supported
from runtime.lifecycle.init_weights import prepare_init
from runtime.lifecycle.run import Engine, evaluate_splits, live
from runtime.lifecycle.summary import close_summary, finite_or_null, grok_summary

PROGRESS = ("ensemble/training", "ensemble/val_acc_min", "ensemble/val_acc_max")


def run_ensemble(members: Sequence[Member], callbacks: Sequence[Callback] = ()) -> list[dict[str, Any]]:
    """Train all members together; returns their summaries (also written to each run folder).
    callbacks: extra Lightning callbacks for the ensemble's trainer (benchmarks, tests)."""
    return live(EnsembleEngine(members, callbacks))


def check_regularizers(regularizers: Mapping[str, Regularizer]) -> None:
    for name, reg in regularizers.items():
        if type(reg).bind is not Regularizer.bind:
            raise ConfigError(f"regularizer.{name}", reg.__class__.__name__,
                              "a term of the net's output alone in an ensemble (this one evaluates the net itself)")


class EnsembleEngine(Engine):
    vmapped = True
    jobs: list[Member]

    def __init__(self, members: Sequence[Member], callbacks: Sequence[Callback] = ()):
        super().__init__(members)
        self.callbacks = list(callbacks)
        self.say(f"ensemble of {len(members)} members: {members[0].out} ... {members[-1].out}")

    def check(self) -> None:
        check_supported(self.jobs[0].cfg)
        for member in self.jobs[1:]:
            if member.shared != self.jobs[0].shared:
                raise ConfigError("hydra/launcher", "ensemble", "jobs that differ only in packable values "
                                  "(the launcher groups them; this group mixes others)")

    def initial_weights(self, job: Member, net: nn.Module) -> str | None:
        if any(getattr(part, "data_dependent_shapes", False) for part in net.modules()):
            raise ConfigError("hydra/launcher", "ensemble", "basic or local_parallel for a net whose parts route "
                              "tokens by the data (a mixture of experts cannot run under torch.func.vmap)")
        return prepare_init(net, job.out, job.cfg.get("init_from"), job.cfg.get("init_scale", 1.0))

    def module(self, nets: Sequence[nn.Module], datamodule: Any) -> pl.LightningModule:
        regularizers = [build(m.cfg.regularizer, "regularizer") for m in self.jobs]
        check_regularizers(regularizers[0])
        cfg = self.jobs[0].cfg
        checkpoint = cfg.callbacks.get("checkpoint") or {}
        recipes = [build(m.cfg.optimizer, "optimizer") for m in self.jobs]
        with settings_of("ensemble"):
            return EnsembleModule(nets, datamodule.spec, recipes, regularizers, cfg.trainer.get("gradient_clip_val"),
                                  self.jobs, checkpoint_every=checkpoint.get("every_n_train_steps"),
                                  compile=(cfg.get("ensemble") or {}).get("compile", "auto"))

    def trainer(self, module: pl.LightningModule, datamodule: Any) -> pl.Trainer:
        cfg = self.jobs[0].cfg
        settings: dict[str, Any] = dict(logger=False, gradient_clip_val=None, enable_checkpointing=False,
                                        enable_model_summary=False, default_root_dir=str(self.jobs[0].out))
        settings["callbacks"] = [*self.callbacks, StopAtStepBoundary()]
        if progress := cfg.callbacks.get("progress"):
            settings["callbacks"].append(build(progress, "callbacks.progress", metrics=PROGRESS))
        else:
            settings["enable_progress_bar"] = False
        trainer = build(cfg.trainer, "trainer", **settings)
        if trainer.strategy.root_device.type == "cpu":
            self.say("note: on a CPU an ensemble is no faster than its runs one after another (measured 0.5x for "
                     "mlp_grok); hydra/launcher=local_parallel suits CPUs")
        return trainer

    def fit(self, trainer: pl.Trainer, module: EnsembleModule, datamodule: Any) -> None:
        bounds = task_loss_bounds(datamodule)
        for member in self.jobs:
            if member.grok is not None and bounds is not None:  # logged once, as the solo run's callback does
                member.log(member.grok.set_bounds(bounds), 0)
        stop_request.install()  # SIGINT / SIGTERM: stop after the step under way (StopAtStepBoundary)
        trainer.fit(module, datamodule=datamodule)
        module.to(trainer.strategy.root_device)  # `fit` leaves it on the CPU; evaluate where it trained
        module.report_health()
        stopped = stop_request.signum
        for member in self.jobs:
            if stopped is not None and member.training:
                member.summary["signal"] = signal.Signals(stopped).name
            member.finish(trainer.global_step, trainer.interrupted or stopped is not None)

    def final_numbers(self, trainer: pl.Trainer, module: EnsembleModule, datamodule: Any) -> None:
        """Each member's final (or frozen) weights: its numbers on every split, its test row, its weights on disk."""
        finals = evaluate_splits(module.evaluate, datamodule, len(self.jobs))
        device = module.stacked.flat.device
        ensemble = {"size": len(self.jobs), "device": str(device), "compiled": module.compiled}
        for index, (member, final) in enumerate(zip(self.jobs, finals)):
            test = {key: value for key, value in final.items() if key.startswith("test/")}
            if test:
                member.log(test, member.steps, epoch=1)
            member.save_weights(module.stacked.member_state(index), member.steps, ensemble | {"index": index})
            member.summary |= {"final": finite_or_null(final), **grok_summary(member.grok),
                               "checkpoints": ["checkpoints/last.ckpt"], "ensemble": ensemble | {"index": index}}

    def ended_by(self, err: BaseException, trainer: pl.Trainer | None) -> None:
        for member in self.jobs:
            if member.training:
                member.status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
                member.error = f"{type(err).__name__}: {err}"

    def close(self, started: float) -> None:
        stop_request.restore()
        for member in self.jobs:
            member.summary |= {"status": member.status, "steps": member.steps or 0}
            if member.error:
                member.summary["error"] = member.error
            for logger in member.loggers:
                logger.finalize("success" if member.status != "failed" else "failed")
            close_summary(member.out, member.summary, member.loggers, started)
        wall = time.time() - started
        steps = sum(member.steps or 0 for member in self.jobs)
        self.say(f"ensemble done: {steps} member steps in {wall:.1f} s ({steps / wall:.1f}/s); "
                 f"statuses {sorted({m.status for m in self.jobs})}")
