"""The one entry point: compose the config, build data, net, module, callbacks and loggers, train, write summary.

    python launch.py                                  # default experiment (mlp_grok)
    python launch.py experiment=transformer_grok_cpu  # another experiment
    python launch.py -m optimizer.weight_decay=0.5,1.0 seed=0,1   # a sweep, one run folder per job
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from callbacks import GrokkingTime, NonFiniteLossError
from runtime.build import build, build_net, configure_torch
from runtime.errors import ConfigError, require
from runtime.init import prepare_init
from runtime.loggers import wandb_identity
from runtime.quiet import quiet_library_noise
from runtime.summary import close_summary, grok_summary, read_summary

FINISHED = ("completed", "stopped_after_grokking")  # statuses `resume=true` skips


def overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one configuration; always leaves `summary.json` in the run folder, whatever happens."""
    out = Path(cfg.paths.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = print if rank_zero_only.rank == 0 else (lambda *a, **k: None)  # DDP: only the main process speaks
    report(f"[grokking-lab] run folder: {out}", flush=True)
    started = time.time()
    quiet_library_noise()
    summary: dict[str, Any] = {"status": "failed", "experiment": cfg.get("name"), "seed": cfg.seed,
                               "overrides": overrides(), "run_dir": str(out)}
    loggers: list = []
    ckpt_path = cfg.ckpt_path
    if cfg.get("resume"):
        previous = read_summary(out)
        if previous.get("status") in FINISHED:
            report(f"[grokking-lab] resume: already {previous['status']}, skipped: {out}", flush=True)
            return previous
        last = out / "checkpoints" / "last.ckpt"
        if ckpt_path is None and last.is_file():
            ckpt_path = str(last)
            report(f"[grokking-lab] resume: continuing from {last}", flush=True)
            if "init_fingerprint" in previous:  # the weights it started from are still those
                summary["init_fingerprint"] = previous["init_fingerprint"]
    try:
        require(isinstance(cfg.seed, int), "seed", cfg.seed, "an integer")
        require(ckpt_path is None or Path(ckpt_path).is_file(), "ckpt_path", ckpt_path,
                "null or the path of an existing checkpoint file")
        configure_torch(cfg)
        datamodule = build(cfg.data, "data")
        pl.seed_everything(cfg.seed, workers=False, verbose=False)  # the model-init seed, apart from the split's
        net = build_net(cfg.model, datamodule.spec)
        if ckpt_path is None:  # a resumed run takes its weights from the checkpoint
            summary["init_fingerprint"] = prepare_init(net, out, cfg.get("init_from"), cfg.get("init_scale", 1.0))
        # objects are passed after instantiation: Hydra would turn dataclass arguments into configs
        make_module = build(cfg.module, "module", _partial_=True)
        graphed = bool(cfg.module.get("cuda_graph"))
        module = make_module(net=net, spec=datamodule.spec, optimizer=build(cfg.optimizer, "optimizer"),
                             regularizers=build(cfg.regularizer, "regularizer"),
                             **({"clip_grad_norm": cfg.trainer.get("gradient_clip_val")} if graphed else {}))
        callbacks = [build(node, f"callbacks.{name}") for name, node in cfg.callbacks.items() if node]
        loggers = [build(node, f"logger.{name}") for name, node in (cfg.logger or {}).items() if node]
        grok = next((c for c in callbacks if isinstance(c, GrokkingTime)), None)
        # a captured step clips inside its graph (the module got the value); the trainer must not clip again
        trainer: pl.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                                    default_root_dir=str(out), **({"gradient_clip_val": None} if graphed else {}))
        summary["device"] = str(trainer.strategy.root_device)
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if wandb_run := wandb_identity(loggers):
            summary["wandb"] = wandb_run
        summary["status"] = "running"
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            if trainer.interrupted:
                summary["status"] = "interrupted"
            else:
                early = grok is not None and trainer.should_stop and trainer.global_step < trainer.max_steps
                summary["status"] = "stopped_after_grokking" if early else "completed"
                trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")
                if datamodule.has_test:
                    trainer.test(module, datamodule=datamodule, verbose=False)
            summary["steps"] = trainer.global_step
        except NonFiniteLossError as err:  # the weights are those after the last good step
            summary |= {"status": "diverged", "error": str(err), "steps": err.step}
            report(f"[grokking-lab] diverged: {err}; the last good checkpoint is kept", file=sys.stderr)
        module.to(trainer.strategy.root_device)  # `fit` leaves it on the CPU; evaluate where it trained
        summary["final"] = {
            f"{split}/{name}": value
            for split, batch in datamodule.splits.items() if len(batch.targets)
            for name, value in module.evaluate(batch).items()
        }
        summary |= grok_summary(grok)
        summary["checkpoints"] = sorted(str(p.relative_to(out)) for p in (out / "checkpoints").glob("*.ckpt"))
    except BaseException as err:  # keep what was written; record why the run ended
        if summary["status"] in ("failed", "running"):
            summary["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            summary["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        wall = close_summary(out, summary, loggers, started, write=rank_zero_only.rank == 0)
        report(f"[grokking-lab] {summary['status']} after {summary.get('steps', 0)} steps in {wall:.1f} s; "
              f"outputs in {out}", flush=True)
    return summary


class JobFailed(Exception):
    """One job of a multirun failed (its summary.json says why); the sweep's other jobs still run."""


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = run(cfg)
    except ConfigError as err:
        message = f"[grokking-lab] error: {err}"
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            # an ordinary exception: Hydra records this job as failed and goes on with the others
            print(message, file=sys.stderr, flush=True)
            raise JobFailed(message) from None
        raise SystemExit(message) from None
    return summary.get("final", {}).get("val/acc")


if __name__ == "__main__":
    main()
