"""Top-level and trainer settings checked before anything is built, so that a bad one stops the run in one line
instead of failing deep inside Lightning or torch (or, worse, running and doing nothing)."""
from __future__ import annotations

from typing import Any, get_args

import torch
from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
from omegaconf import DictConfig, ListConfig

from core.errors import ConfigError, require

MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's values
# the values Lightning's precision connector accepts (integers such as 32 stand for their string)
PRECISIONS, SHORT_PRECISIONS = get_args(_PRECISION_INPUT_STR), get_args(_PRECISION_INPUT_STR_ALIAS)


def check_run_settings(cfg: DictConfig) -> None:
    """Raise ConfigError for the first top-level or trainer setting that cannot work."""
    require(is_int(cfg.get("seed")), "seed", cfg.get("seed"), "an integer")
    scale = cfg.get("init_scale", 1.0)
    require(is_number(scale) and scale > 0, "init_scale", scale, "a number > 0 (1.0 = as built)")
    threads = cfg.get("threads")
    require(threads is None or (is_int(threads) and threads >= 1), "threads", threads,
            "null (torch's default) or an integer >= 1")
    precision = cfg.get("matmul_precision", "highest")
    require(precision in MATMUL_PRECISIONS, "matmul_precision", precision, f"one of {', '.join(MATMUL_PRECISIONS)}")
    check_trainer(cfg.get("trainer") or DictConfig({}))


def check_trainer(trainer: DictConfig) -> None:
    """The trainer settings a run needs: step counts, where it runs, and in which precision."""
    for name, why in (("max_steps", "the run's length"), ("val_check_interval", "steps between validations"),
                      ("log_every_n_steps", "steps between logged train metrics")):
        if name in trainer:
            value = trainer[name]
            require(is_int(value) and value >= 1, f"trainer.{name}", value, f"an integer >= 1 ({why})")
    if "accelerator" in trainer:
        check_accelerator(trainer.accelerator)
    if "devices" in trainer:
        devices = trainer.devices
        require(is_devices(devices), "trainer.devices", devices,
                "a positive integer, -1 (all), auto, or a list of device indices")
    if "precision" in trainer:
        precision = trainer.precision
        require((is_int(precision) or isinstance(precision, str)) and str(precision) in PRECISIONS + SHORT_PRECISIONS,
                "trainer.precision", precision,
                f"one of {', '.join(PRECISIONS)} (or the short forms {', '.join(SHORT_PRECISIONS)})")


def check_accelerator(accelerator: Any) -> None:
    """cpu and auto always; gpu/cuda and mps only where torch sees such a device."""
    available = {"auto": True, "cpu": True, "gpu": torch.cuda.is_available(), "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}
    here = ", ".join(name for name, ok in available.items() if ok)
    if accelerator in available and not available[accelerator]:
        needs = "an Apple GPU and torch.backends.mps" if accelerator == "mps" else "a CUDA GPU and torch.cuda"
        raise ConfigError("trainer.accelerator", accelerator,
                          f"one of {here} here ({accelerator} needs {needs}.is_available() is False)")
    require(accelerator in available, "trainer.accelerator", accelerator, f"one of {here}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_devices(devices: Any) -> bool:
    """What Lightning reads as a device count or a choice of devices: n >= 1, -1, 'auto', '2', '0,1', [0, 1]."""
    if isinstance(devices, str):
        devices = devices.strip()
        if devices == "auto":
            return True
        if "," in devices:
            indices = [part.strip() for part in devices.split(",") if part.strip()]
            return bool(indices) and all(part.isdigit() for part in indices)
        devices = int(devices) if devices.lstrip("-").isdigit() else None
    if is_int(devices):
        return devices >= 1 or devices == -1
    return (isinstance(devices, (list, tuple, ListConfig)) and len(devices) > 0
            and all(is_int(index) and index >= 0 for index in devices))
