"""Error types: bad settings (printed by the launcher as one clear line) and a diverged run."""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting has a value that cannot work. `key` is the setting's name, relative to its config group."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{self.key}={self.value!r} is not allowed: expected {self.allowed}"

    def under(self, group: str) -> "ConfigError":
        """The same error with its key qualified by the config group it was built from (e.g. `data.p`)."""
        return ConfigError(f"{group}.{self.key}", self.value, self.allowed)


def require(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Raise `ConfigError(key, value, allowed)` unless `condition` holds."""
    if not condition:
        raise ConfigError(key, value, allowed)


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or inf at optimiser step `step` (0-based: `step` good updates were applied);
    no weight was touched by it or by any later step."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"training loss is {value} at step {step}; stopped before applying it")
