"""The one entry point: compose the config, build data, net, module, callbacks and loggers, train, write summary.

    python launch.py                                  # default experiment (mlp_grok)
    python launch.py experiment=transformer_grok_cpu  # another experiment
    python launch.py -m optimizer.weight_decay=0.5,1.0 seed=0,1   # a sweep, one run folder per job
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from callbacks import GrokkingTime, NonFiniteLossError, RunCheckpoint
from runtime.build import build, build_net, configure_torch
from runtime.checks import check_run_settings
from runtime.csv_logger import RunCSVLogger
from runtime.errors import ConfigError, RunInterrupted
from runtime.init import prepare_init
from runtime.loggers import wandb_identity
from runtime.override_check import unknown_key_message
from runtime.quiet import quiet_library_noise
from runtime.resume import check_same_model, read_checkpoint, starting_point
from runtime.run_dir import register_resolvers
from runtime.signals import stop_request
from runtime.summary import close_summary, finite_or_null, grok_summary


def overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one configuration; always leaves `summary.json` in the run folder, whatever happens."""
    out = Path(cfg.paths.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        if rank_zero_only.rank == 0:  # DDP: only the main process speaks
            print(f"[grokking-lab] {line}", flush=True)

    say(f"run folder: {out}")
    started = time.time()
    quiet_library_noise()
    summary: dict[str, Any] = {"status": "failed", "experiment": cfg.get("name"), "seed": cfg.seed,
                               "overrides": overrides(), "run_dir": str(out)}
    loggers: list = []
    trainer: pl.Trainer | None = None
    grok: GrokkingTime | None = None
    ckpt_path, finished = starting_point(out, cfg.ckpt_path, bool(cfg.get("resume")), say)
    if finished is not None:
        return finished
    stop_request.install()
    try:
        check_run_settings(cfg)
        checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None
        start_step = checkpoint["global_step"] if checkpoint else 0
        configure_torch(cfg)
        datamodule = build(cfg.data, "data")
        pl.seed_everything(cfg.seed, workers=False, verbose=False)  # the model-init seed, apart from the split's
        net = build_net(cfg.model, datamodule.spec)
        if checkpoint is None:  # a resumed run takes its weights from the checkpoint
            summary["init_fingerprint"] = prepare_init(net, out, cfg.get("init_from"), cfg.get("init_scale", 1.0))
        elif "init_fingerprint" in checkpoint:
            summary["init_fingerprint"] = checkpoint["init_fingerprint"]
        # objects are passed after instantiation: Hydra would turn dataclass arguments into configs
        make_module = build(cfg.module, "module", _partial_=True)
        graphed = bool(cfg.module.get("cuda_graph"))
        module = make_module(net=net, spec=datamodule.spec, optimizer=build(cfg.optimizer, "optimizer"),
                             regularizers=build(cfg.regularizer, "regularizer"),
                             **({"clip_grad_norm": cfg.trainer.get("gradient_clip_val")} if graphed else {}))
        if checkpoint is not None:
            check_same_model(checkpoint, module, ckpt_path)
            del checkpoint  # Lightning reads it again, whole
            summary["resumed_from_step"] = start_step
        callbacks = [build(node, f"callbacks.{name}") for name, node in cfg.callbacks.items() if node]
        loggers = [build(node, f"logger.{name}") for name, node in (cfg.logger or {}).items() if node]
        for logger in loggers:
            if isinstance(logger, RunCSVLogger):
                logger.keep_steps_before(start_step)  # rows past the checkpoint are logged again
        grok = next((c for c in callbacks if isinstance(c, GrokkingTime)), None)
        for callback in callbacks:
            if isinstance(callback, RunCheckpoint):
                callback.init_fingerprint = summary.get("init_fingerprint")
        # a captured step clips inside its graph (the module got the value); the trainer must not clip again
        trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                        default_root_dir=str(out), **({"gradient_clip_val": None} if graphed else {}))
        summary["device"] = str(trainer.strategy.root_device)
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if wandb_run := wandb_identity(loggers):
            summary["wandb"] = wandb_run
        summary["status"] = "running"
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            early = grok is not None and trainer.should_stop and trainer.global_step < trainer.max_steps
            summary["status"] = "stopped_after_grokking" if early else "completed"
            summary["steps"] = trainer.global_step
            if datamodule.has_test:
                trainer.test(module, datamodule=datamodule, verbose=False)
        except NonFiniteLossError as err:  # the weights are those after the last good step
            summary |= {"status": "diverged", "error": str(err), "steps": err.step}
            summary |= keep_diverged_weights(trainer, module, out, err, say)
        module.to(trainer.strategy.root_device)  # `fit` leaves it on the CPU; evaluate where it trained
        summary["final"] = finite_or_null({
            f"{split}/{name}": value
            for split, batch in datamodule.splits.items() if len(batch.targets)
            for name, value in module.evaluate(batch).items()
        })
        summary |= grok_summary(grok)
    except BaseException as err:  # keep what was written; record why the run ended
        if summary["status"] in ("failed", "running"):
            stopped = stop_request.signum or (signal.SIGINT if isinstance(err, KeyboardInterrupt) else None)
            if stopped is not None or isinstance(err, SIGTERMException):
                summary |= {"status": "interrupted", "signal": signal.Signals(stopped or signal.SIGTERM).name}
                if trainer is not None:
                    summary["steps"] = trainer.global_step
                    summary |= grok_summary(grok)
            else:
                summary["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        stop_request.restore()
        summary["checkpoints"] = sorted(str(p.relative_to(out)) for p in (out / "checkpoints").glob("*.*")
                                        if p.suffix in (".ckpt", ".pt"))
        wall = close_summary(out, summary, loggers, started, write=rank_zero_only.rank == 0)
        say(f"{summary['status']} after {summary.get('steps', 0)} steps in {wall:.1f} s; outputs in {out}")
    return summary


def keep_diverged_weights(trainer: pl.Trainer, module: pl.LightningModule, out: Path, err: NonFiniteLossError,
                          say) -> dict[str, Any]:
    """After a non-finite loss the net holds the weights after the last good step: save them when finite."""
    finite = all(torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point())
    last = out / "checkpoints" / "last.ckpt"
    if finite:
        path = out / "checkpoints" / "last_finite.pt"
        path.parent.mkdir(exist_ok=True)
        torch.save(module.net.state_dict(), path)  # the net's weights, as init.pt: usable as init_from
        say(f"{path.relative_to(out)} holds the weights after step {err.step}, the last finite ones"
            + ("; checkpoints/last.ckpt is the last state to resume from" if last.is_file() else ""))
        return {"last_finite_weights": str(path.relative_to(out))}
    say("the weights are not finite; "
        + ("checkpoints/last.ckpt holds the last checkpointed ones" if last.is_file() else
           "no checkpoint was written before; init.pt holds the initial weights"))
    return {"last_finite_weights": str(last.relative_to(out)) if last.is_file() else None}


class JobFailed(Exception):
    """One job of a multirun failed (its summary.json says why); the sweep's other jobs still run."""


def fail(message: str) -> None:
    """End this job with `message`: a multirun records it as failed and goes on; a single run exits 1."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        print(message, file=sys.stderr, flush=True)
        raise JobFailed(message)  # an ordinary exception: Hydra records the job as failed and runs the others
    raise SystemExit(message)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = run(cfg)
    except ConfigError as err:
        fail(f"[grokking-lab] error: {err}")
    except RunInterrupted as err:  # a stop signal ends the whole launch (a sweep too), as the shell expects
        raise SystemExit(128 + err.signum) from None
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None
    if summary["status"] == "diverged":
        fail(f"[grokking-lab] diverged: {summary['error']}")
    return summary.get("final", {}).get("val/acc")


register_resolvers()  # ${unique_dir:...} in the run and sweep folder names

if __name__ == "__main__":
    if (message := unknown_key_message(sys.argv[1:])) is not None:  # a typo: one line, not Hydra's six
        raise SystemExit(f"[grokking-lab] error: {message}")
    main()
