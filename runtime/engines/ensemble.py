"""Train the members of one ensemble (jobs whose configs differ only in packable values) in one process.

Every member gets what `launch.run` gives a solo run of its config: its initial weights from its own seed (saved
as `init.pt`, fingerprinted), its loggers (`metrics.csv` rows under the same names and steps, W&B in its sweep
group), its grokking time, and a `summary.json` with its own status, steps and final metrics, written whatever
happens to the process.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from callbacks.run.grokking_time import task_loss_bounds
from core.errors import ConfigError
from lightning_modules.ensemble_module import EnsembleModule
from nets.parts.gated_deltanet import kernel_in_use
from regularizers.base import Regularizer
from runtime.config.build import build, build_net, configure_torch
from runtime.config.checks import check_run_settings
from runtime.engines.members import Member, check_supported
from runtime.lifecycle.init_weights import prepare_init
from runtime.lifecycle.summary import close_summary, finite_or_null, grok_summary
from runtime.logs.loggers import wandb_identity
from runtime.logs.quiet import quiet_library_noise

PROGRESS = ("ensemble/training", "ensemble/val_acc_min", "ensemble/val_acc_max")


def check_members(members: Sequence[Member]) -> None:
    first = members[0].cfg
    check_supported(first)
    for member in members[1:]:
        if member.shared != members[0].shared:
            raise ConfigError("hydra/launcher", "ensemble", "jobs that differ only in packable values "
                              "(the launcher groups them; this group mixes others)")
    for member in members:
        check_run_settings(member.cfg)


def check_regularizers(regularizers: Mapping[str, Regularizer]) -> None:
    for name, reg in regularizers.items():
        if type(reg).bind is not Regularizer.bind:
            raise ConfigError(f"regularizer.{name}", reg.__class__.__name__,
                              "a term of the net's output alone in an ensemble (this one evaluates the net itself)")


def run_ensemble(members: Sequence[Member], callbacks: Sequence[Callback] = ()) -> list[dict[str, Any]]:
    """Train all members together; returns their summaries (also written to each run folder).
    callbacks: extra Lightning callbacks for the ensemble's trainer (benchmarks, tests)."""
    started = time.time()
    quiet_library_noise()
    cfg = members[0].cfg
    print(f"[grokking-lab] ensemble of {len(members)} members: {members[0].out} ... {members[-1].out}", flush=True)
    try:
        check_members(members)
        configure_torch(cfg)
        datamodule = build(cfg.data, "data")
        regularizers = [build(m.cfg.regularizer, "regularizer") for m in members]
        check_regularizers(regularizers[0])
        nets = []
        for member in members:
            pl.seed_everything(member.cfg.seed, workers=False, verbose=False)
            net = build_net(member.cfg.model, datamodule.spec)
            if any(getattr(part, "data_dependent_shapes", False) for part in net.modules()):
                raise ConfigError("hydra/launcher", "ensemble", "basic or local_parallel for a net whose parts route "
                                  "tokens by the data (a mixture of experts cannot run under torch.func.vmap)")
            member.summary["init_fingerprint"] = prepare_init(net, member.out, member.cfg.get("init_from"),
                                                              member.cfg.get("init_scale", 1.0))
            nets.append(net)
        checkpoint = cfg.callbacks.get("checkpoint") or {}
        module = EnsembleModule(nets, datamodule.spec, [build(m.cfg.optimizer, "optimizer") for m in members],
                                regularizers, cfg.trainer.get("gradient_clip_val"), members,
                                checkpoint_every=checkpoint.get("every_n_train_steps"))
        settings: dict[str, Any] = dict(logger=False, gradient_clip_val=None, enable_checkpointing=False,
                                        enable_model_summary=False, default_root_dir=str(members[0].out))
        settings["callbacks"] = list(callbacks)
        if progress := cfg.callbacks.get("progress"):
            settings["callbacks"].append(build(progress, "callbacks.progress", metrics=PROGRESS))
        else:
            settings["enable_progress_bar"] = False
        trainer = build(cfg.trainer, "trainer", **settings)
        if (kernel := kernel_in_use(nets[0], trainer.strategy.root_device.type, vmapped=True)) is not None:
            for member in members:
                member.summary["gdn_kernel"] = kernel
        if trainer.strategy.root_device.type == "cpu":
            print("[grokking-lab] note: on a CPU an ensemble is no faster than its runs one after another "
                  "(measured 0.5x for mlp_grok); hydra/launcher=local_parallel suits CPUs", flush=True)
        for member in members:
            for logger in member.loggers:
                logger.log_hyperparams(OmegaConf.to_container(member.cfg, resolve=True))
            if wandb_run := wandb_identity(member.loggers):
                member.summary["wandb"] = wandb_run
            if member.grok is not None and (bounds := task_loss_bounds(datamodule)) is not None:
                member.log(member.grok.set_bounds(bounds), 0)
        trainer.fit(module, datamodule=datamodule)
        module.to(trainer.strategy.root_device)  # `fit` leaves it on the CPU; evaluate where it trained
        module.report_health()
        for member in members:
            member.finish(trainer.global_step, trainer.interrupted)
        with trainer.precision_plugin.forward_context():  # the run's precision, as its validation
            finish_members(module, datamodule, members)
        for member in members:
            member.summary["final_precision"] = str(trainer.precision)
    except BaseException as err:  # every member not yet done records why the ensemble ended
        for member in members:
            if member.training:
                member.status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
                member.error = f"{type(err).__name__}: {err}"
        raise
    finally:
        for member in members:
            member.summary |= {"status": member.status, "steps": member.steps or 0}
            if member.error:
                member.summary["error"] = member.error
            for logger in member.loggers:
                logger.finalize("success" if member.status != "failed" else "failed")
            close_summary(member.out, member.summary, member.loggers, started)
        wall = time.time() - started
        steps = sum(member.steps or 0 for member in members)
        print(f"[grokking-lab] ensemble done: {steps} member steps in {wall:.1f} s ({steps / wall:.1f}/s); "
              f"statuses {sorted({m.status for m in members})}", flush=True)
    return [member.summary for member in members]


def finish_members(module: EnsembleModule, datamodule, members: Sequence[Member]) -> None:
    """Final metrics on the final (or frozen) weights, the test split, weights on disk; a member's summary."""
    device = module.stacked.flat.device
    final: list[dict[str, float]] = [{} for _ in members]
    for split in datamodule.split_names():
        for index, metrics in enumerate(module.evaluate(datamodule.eval_batches(split))):
            final[index] |= {f"{split}/{name}": value for name, value in metrics.items()}
            if split == "test":
                members[index].log({f"test/{k}": v for k, v in metrics.items()}, members[index].steps, epoch=1)
    ensemble = {"size": len(members), "device": str(device)}
    for index, member in enumerate(members):
        member.save_weights(module.stacked.member_state(index), member.steps, ensemble | {"index": index})
        member.summary |= {"device": str(device), "final": finite_or_null(final[index]), **grok_summary(member.grok),
                           "checkpoints": ["checkpoints/last.ckpt"], "ensemble": ensemble | {"index": index}}
