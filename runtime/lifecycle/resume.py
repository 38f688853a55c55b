"""Where a run starts: a fresh start, a checkpoint (`ckpt_path`), or its own folder's last checkpoint (`resume`).

Nothing already written is lost on the way: a folder that is started over keeps what its earlier run wrote
(`metrics.csv`, `summary.json`, checkpoints, ...) under `*.attempt-<n>*` names, and a checkpoint is checked (a run's checkpoint, of this model) before
Lightning reads it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from core.errors import ConfigError, require
from runtime.lifecycle.summary import read_summary

# statuses `resume=true` skips: the run is over, and training it again would end the same way
FINISHED = ("completed", "stopped_after_grokking", "stopped_early", "diverged")
LAST = Path("checkpoints") / "last.ckpt"
EARLIER_FILES = ("metrics.csv", "summary.json", "hparams.yaml", "init.pt", "checkpoints", "plots")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` (tensors memory-mapped, not read), refused in one line unless a run wrote it."""
    require(Path(path).is_file(), "ckpt_path", str(path), "null or the path of an existing checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # not a torch file at all (a CSV, a truncated download, ...)
        raise ConfigError("ckpt_path", str(path), f"a checkpoint written by a run (torch cannot read it: "
                                                   f"{type(err).__name__})") from None
    require(isinstance(checkpoint, dict) and {"state_dict", "global_step", "loops"} <= set(checkpoint), "ckpt_path",
            str(path), "a checkpoint written by a run (checkpoints/*.ckpt); initial weights (init.pt) go to "
                       "init_from")
    return checkpoint


def check_same_model(checkpoint: dict[str, Any], module: nn.Module, path: str | Path) -> None:
    """Refuse a checkpoint of another architecture by name, before Lightning fails on its state_dict."""
    saved, own = checkpoint["state_dict"], module.state_dict()
    differ = sorted(set(saved) ^ set(own)) + sorted(k for k in own if k in saved and saved[k].shape != own[k].shape)
    require(not differ, "ckpt_path", str(path),
            f"a checkpoint of this model config (it differs in {len(differ)} weights: {', '.join(differ[:4])})")


def set_aside_earlier_attempt(out: Path) -> list[str]:
    """Rename what an earlier run left in the folder to `<name>.attempt-<n>[.suffix]` (n = 1, 2, ...), so a
    fresh start neither appends to its metrics nor resumes from its checkpoint later."""
    present = [name for name in EARLIER_FILES if (out / name).exists()]
    if not any((out / name).is_file() for name in ("metrics.csv", "summary.json")):
        return []  # nothing ran here (a new folder, or one holding only .hydra/)
    n = 1
    while any((out / attempt_name(name, n)).exists() for name in EARLIER_FILES):
        n += 1
    for name in present:
        (out / name).rename(out / attempt_name(name, n))
    return [attempt_name(name, n) for name in present]


def attempt_name(name: str, n: int) -> str:
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.attempt-{n}.{suffix}" if dot else f"{name}.attempt-{n}"


def starting_point(out: Path, ckpt_path: str | None, resume: bool,
                   report: Callable[[str], None]) -> tuple[str | None, dict[str, Any] | None]:
    """(checkpoint to continue from or None, the earlier summary when `resume` finds the run already over)."""
    if resume:
        previous = read_summary(out)
        if previous.get("status") in FINISHED:
            report(f"resume: already {previous['status']}, skipped: {out}")
            return None, previous
        if ckpt_path is None and (out / LAST).is_file():
            report(f"resume: continuing from {out / LAST}")
            return str(out / LAST), None
        if ckpt_path is None:
            kept = set_aside_earlier_attempt(out)
            report(f"resume: no checkpoint in {out / 'checkpoints'}; starting over"
                   + (f" (earlier files kept as {', '.join(kept)})" if kept else ""))
            return None, None
    if ckpt_path is None and (kept := set_aside_earlier_attempt(out)):
        report(f"{out} already held a run; its files are kept as {', '.join(kept)}")
    return ckpt_path, None
