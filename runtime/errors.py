"""Error types: bad settings (printed by the launcher as one clear line), a diverged run, a run stopped by a signal."""
from __future__ import annotations

import signal
from typing import Any, Sequence

from nets.settings import InvalidSetting


class ConfigError(InvalidSetting):
    """A setting has a value that cannot work (see `nets.settings.InvalidSetting`: `key` relative to its config
    group, `related` settings of the same group that `allowed` names). Raised outside nets/; `build` turns a net's
    `InvalidSetting` into one qualified by its config group, so `except ConfigError` catches both."""


def require(condition: bool, key: str, value: Any, allowed: str, related: Sequence[str] = ()) -> None:
    """Raise `ConfigError(key, value, allowed, related)` unless `condition` holds."""
    if not condition:
        raise ConfigError(key, value, allowed, related)


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or inf at optimiser step `step` (0-based: `step` good updates were applied);
    no weight was touched by it or by any later step."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"training loss is {value} at step {step}; stopped before applying it")


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run at a step boundary, after `checkpoints/last.ckpt` was written."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(f"{signal.Signals(signum).name} received; stopped after step {step}")
