"""The one entry point: compose the config, build data, net, module, callbacks and loggers, train, write summary.

    python launch.py                                        # default experiment (mlp_grok)
    python launch.py experiment=transformer_grok size=cpu   # another experiment, at CPU size
    python launch.py -m optimizer.weight_decay=0.5,1.0 seed=0,1   # a sweep, one run folder per job
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from callbacks.run.stop_request import stop_request
from core.errors import ConfigError, NonFiniteLossError, RunInterrupted
from runtime.config.override_check import unknown_key_message
from runtime.config.run_dir import register_resolvers
from runtime.lifecycle.assemble import RunParts, assemble
from runtime.lifecycle.final_eval import final_metrics
from runtime.lifecycle.resume import starting_point
from runtime.lifecycle.status import diverged, ended_by, fit_status
from runtime.lifecycle.summary import callback_parts, close_summary, grok_summary
from runtime.logs.quiet import quiet_library_noise


def overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def say(line: str) -> None:
    if rank_zero_only.rank == 0:  # DDP: only the main process speaks
        print(f"[grokking-lab] {line}", flush=True)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one configuration; always leaves `summary.json` in the run folder, whatever happens."""
    out = Path(cfg.paths.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    say(f"run folder: {out}")
    started = time.time()
    quiet_library_noise()
    summary: dict[str, Any] = {"status": "failed", "experiment": cfg.get("name"), "seed": cfg.seed,
                               "overrides": overrides(), "run_dir": str(out)}
    ckpt_path, finished = starting_point(out, cfg.ckpt_path, bool(cfg.get("resume")), say)
    if finished is not None:
        return finished
    parts: RunParts | None = None
    stop_request.install()
    try:
        parts = assemble(cfg, out, ckpt_path, say)
        summary |= parts.facts | {"status": "running"}
        try:
            parts.trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=ckpt_path)
            summary |= fit_status(parts.trainer, parts.grok)
            if parts.datamodule.has_test:
                parts.trainer.test(parts.module, datamodule=parts.datamodule, verbose=False)
        except NonFiniteLossError as err:  # the weights are those after the last good step
            summary |= diverged(parts.module, out, err, say)
        summary |= final_metrics(parts.trainer, parts.module, parts.datamodule, cfg.get("final_weights", "last"))
        summary |= grok_summary(parts.grok) | callback_parts(parts.trainer.callbacks)
    except BaseException as err:  # keep what was written; record why the run ended
        if summary["status"] in ("failed", "running"):
            summary |= ended_by(err, parts.trainer if parts else None, parts.grok if parts else None)
        raise
    finally:
        stop_request.restore()
        summary["checkpoints"] = sorted(str(p.relative_to(out)) for p in (out / "checkpoints").glob("*.*")
                                        if p.suffix in (".ckpt", ".pt"))
        wall = close_summary(out, summary, parts.loggers if parts else [], started,
                             write=rank_zero_only.rank == 0)
        say(f"{summary['status']} after {summary.get('steps', 0)} steps in {wall:.1f} s; outputs in {out}")
    return summary


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
    return summary.get("final", {}).get(str(cfg.optimized_metric))  # a sweeper's objective


register_resolvers()  # ${unique_dir:...} in the run and sweep folder names

if __name__ == "__main__":
    if (message := unknown_key_message(sys.argv[1:])) is not None:  # a typo: one line, not Hydra's six
        raise SystemExit(f"[grokking-lab] error: {message}")
    main()
