"""One error type for bad settings, so the launcher can print it as one clear line."""
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
