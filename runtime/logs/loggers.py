"""Logger construction that never prompts: W&B goes online when the user is logged in, offline otherwise."""
from __future__ import annotations

import netrc
import os
from typing import Any, Iterable, Sequence
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger, WandbLogger

from core.errors import require

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_credentials_present() -> bool:
    """True when W&B has an API key: the WANDB_API_KEY variable or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """`auto` -> WANDB_MODE if the user set it, else online with credentials and offline without."""
    require(mode in WANDB_MODES, "mode", mode, ", ".join(WANDB_MODES))
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    return "online" if wandb_credentials_present() else "offline"


def sweep_context() -> tuple[str | None, list[str]]:
    """(the sweep's folder name, this job's overrides) inside a Hydra multirun; (None, overrides) otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, []
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return os.path.basename(os.path.normpath(hydra_cfg.sweep.dir)), overrides
    return None, overrides


def wandb_logger(
    project: str,
    save_dir: str,
    experiment: str,
    group: str | None = None,
    tags: Sequence[str] = (),
    job_type: str = "train",
    name: str | None = None,
    mode: str = "auto",
    **kwargs: Any,
) -> WandbLogger:
    """W&B logger; `group: null` groups by experiment in single runs and by sweep in a multirun
    (`<experiment>/<sweep folder>`), where each job is also tagged with its overrides (`key=value`)."""
    resolved = resolve_wandb_mode(mode)
    os.makedirs(save_dir, exist_ok=True)
    sweep, overrides = sweep_context()
    if group is None:
        group = f"{experiment}/{sweep}" if sweep else experiment
    tags = [*tags, f"experiment={experiment}", *(o[:64] for o in overrides if sweep)]
    if sweep and name is None:
        name = f"{sweep}/{os.path.basename(os.path.normpath(save_dir))}"
    return WandbLogger(project=project, save_dir=save_dir, group=group, tags=tags, job_type=job_type,
                       name=name, mode=resolved, **kwargs)


def publish_summary(loggers: Iterable[Logger], summary: dict[str, Any]) -> None:
    """Put the run's final numbers into each logger's own run summary (where the logger has one)."""
    flat = {f"final/{k}": v for k, v in summary.get("final", {}).items()}
    flat |= {k: v for k, v in summary.get("grok", {}).items() if v is not None}
    flat |= {"status": summary.get("status"), "grokked": summary.get("grokked")}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(flat)


def wandb_identity(loggers: Iterable[Logger]) -> dict[str, Any] | None:
    """The W&B run's id, name, group, tags and mode as W&B itself has them (for summary.json and analysis)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            return {"id": run.id, "name": run.name, "group": run.group, "tags": list(run.tags),
                    "job_type": run.job_type, "project": run.project, "offline": run.offline}
    return None


def finish_wandb(loggers: Iterable[Logger]) -> None:
    """End each logger's own W&B run (several are open at once in an ensemble), so the next job starts its own."""
    for logger in loggers:
        # `experiment` would start a run that never began; `_experiment` is the run, if any
        if isinstance(logger, WandbLogger) and (run := getattr(logger, "_experiment", None)) is not None:
            run.finish()
