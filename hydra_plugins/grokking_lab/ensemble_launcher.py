"""`hydra/launcher=ensemble`: run the jobs of a multirun as ensembles, many jobs per process and per GPU.

Jobs whose configs differ only in packable values (`runtime.engines.members.PACKABLE`: seed, init, learning rates,
weight decay, regulariser weights) are trained together by `runtime.engines.ensemble.run_ensemble`, up to `max_members` at a
time; jobs that differ in anything else form further ensembles, run one after another. Every job still gets the
folder Hydra gives it (`.hydra/` with its config and overrides) and leaves there what a solo run would. After a stop
signal (SIGINT, SIGTERM) ended an ensemble, the ensembles still to come are not started: their jobs fail with
that reason (their folders hold `.hydra/` only).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


class EnsembleLauncher(Launcher):
    def __init__(self, max_members: int = 64) -> None:
        super().__init__()
        if not isinstance(max_members, int) or max_members < 1:
            raise ValueError(f"hydra.launcher.max_members={max_members!r} is not allowed: expected an integer >= 1")
        self.max_members = max_members
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        log.info(f"Ensemble launcher: {len(job_overrides)} jobs, up to {self.max_members} per ensemble")
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        returns: list[JobReturn] = []
        groups: dict[str, list[int]] = {}
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            ret = run_job(hydra_context=self.hydra_context, task_function=prepare_member, config=sweep_config,
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            returns.append(ret)
            member = ret.return_value.get("member") if ret.status == JobStatus.COMPLETED else None
            if member is not None:
                groups.setdefault(member.shared, []).append(offset)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        stopped_by: str | None = None  # the stop signal that ended an ensemble: later ones do not start
        for indices in groups.values():
            for start in range(0, len(indices), self.max_members):
                group = [returns[i] for i in indices[start : start + self.max_members]]
                if stopped_by is None:
                    stopped_by = train_group(group)
                else:
                    not_started(group, stopped_by)
        for ret in returns:
            if ret.status == JobStatus.COMPLETED:
                ret.return_value = ret.return_value["val_acc"]
        return returns


def prepare_member(cfg: DictConfig) -> dict[str, Any]:
    """The per-job task, run inside Hydra's job context: pin the job's config and build its loggers (which read
    the sweep context). A job whose folder already holds a finished run is skipped under `resume=true`."""
    from runtime.config.build import build
    from runtime.engines.members import Member, shared_part
    from runtime.lifecycle.resume import FINISHED, set_aside_earlier_attempt
    from runtime.lifecycle.summary import read_summary

    shared = shared_part(cfg)  # before resolving: run folders differ, their interpolations do not
    OmegaConf.resolve(cfg)  # ${hydra:...} and ${paths.output_dir} while this job's Hydra config is set
    out = Path(cfg.paths.output_dir).resolve()
    if cfg.get("resume") and (previous := read_summary(out)).get("status") in FINISHED:
        print(f"[grokking-lab] resume: already {previous['status']}, skipped: {out}", flush=True)
        return {"member": None, "val_acc": previous.get("final", {}).get("val/acc")}
    if kept := set_aside_earlier_attempt(out):  # an ensemble member always trains from its start
        print(f"[grokking-lab] {out} already held a run; its files are kept as {', '.join(kept)}", flush=True)
    loggers = [build(node, f"logger.{name}", **concurrent_runs(node))
               for name, node in (cfg.logger or {}).items() if node]
    member = Member(cfg, out, list(HydraConfig.get().overrides.task), loggers, shared)
    return {"member": member, "val_acc": None}


def concurrent_runs(node: DictConfig) -> dict[str, Any]:
    """W&B keeps one run per member open at once: ask it for a new run instead of replacing the current one."""
    return {"reinit": "create_new"} if "wandb" in str(node.get("_target_", "")) else {}


def not_started(returns: Sequence[JobReturn], signal_name: str) -> None:
    """An ensemble that a stop signal kept from starting: each job fails with that reason."""
    reason = f"not started: a stop signal ({signal_name}) ended an earlier ensemble of the sweep"
    log.error(f"ensemble of {len(returns)} {reason}")
    for ret in returns:
        ret.status, ret.return_value = JobStatus.FAILED, RuntimeError(reason)


def train_group(returns: Sequence[JobReturn]) -> str | None:
    """Train one ensemble; each job's return becomes its val accuracy, or the error that ended it. Returns the stop
    signal that interrupted it (None when none did)."""
    from runtime.engines.ensemble import run_ensemble

    members = [ret.return_value["member"] for ret in returns]
    try:
        summaries = run_ensemble(members)
    except Exception as err:  # every member's summary.json says what happened
        log.error(f"ensemble of {len(members)} failed: {type(err).__name__}: {err}")
        for ret in returns:
            ret.status, ret.return_value = JobStatus.FAILED, err
        return None
    for ret, summary in zip(returns, summaries):
        if summary["status"] in ("failed", "interrupted"):
            ret.status, ret.return_value = JobStatus.FAILED, RuntimeError(summary.get("error", summary["status"]))
        else:
            ret.return_value = {"val_acc": summary.get("final", {}).get("val/acc")}
    return next((summary["signal"] for summary in summaries if summary.get("signal")), None)
