"""Error types: bad settings (printed by the launcher as one clear line), a diverged run, a run stopped by a signal."""
from __future__ import annotations

import re
import signal
from typing import Any, Sequence


class ConfigError(ValueError):
    """A setting has a value that cannot work. `key` is the setting's name, relative to its config group.
    `related`: other settings of the same group that `allowed` names (e.g. `d_model` in "a divisor of
    d_model=128"), so that they are qualified along with the key."""

    def __init__(self, key: str, value: Any, allowed: str, related: Sequence[str] = ()):
        self.key, self.value, self.allowed, self.related = key, value, allowed, tuple(related)
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{self.key}={self.value!r} is not allowed: expected {self.allowed}"

    def under(self, group: str) -> "ConfigError":
        """The same error with its key qualified by the config group it was built from (e.g. `data.p`)."""
        allowed = self.allowed
        for name in self.related:  # a whole name only: not part of a longer or already-qualified one
            allowed = re.sub(rf"(?<![\w.]){re.escape(name)}(?!\w)", f"{group}.{name}", allowed)
        return ConfigError(f"{group}.{self.key}", self.value, allowed, [f"{group}.{name}" for name in self.related])


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
