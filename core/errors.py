"""The errors a run reports: a bad setting (printed by the launcher as one line that names the key), a diverged run,
a run stopped by a signal.

Code at any level checks its arguments with `require(condition, key, value, allowed)`; the `ConfigError` it raises
names the setting relative to its config group (`n_heads`), the value, and what would work. Whoever builds the object
from a config qualifies the key with where the setting lives (runtime/config/build.py: `model.n_heads`); a net that
builds parts (a transformer's mixer and FFN) qualifies their errors with the part's slot first (`settings_of`), so
the key is the part's setting (`model.ffn.d_hidden`).
"""
from __future__ import annotations

import re
import signal
from contextlib import contextmanager
from typing import Any, Collection, Iterator, Sequence


class ConfigError(ValueError):
    """A setting has a value that cannot work. `key` is the setting's name, relative to its config group until
    qualified (`under`). `related`: other settings of the same group that `allowed` names (e.g. `d_model` in "a
    divisor of d_model=128"), so that they are qualified along with the key."""

    def __init__(self, key: str, value: Any, allowed: str, related: Sequence[str] = ()):
        self.key, self.value, self.allowed, self.related = key, value, allowed, tuple(related)
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{self.key}={self.value!r} is not allowed: expected {self.allowed}"

    def under(self, group: str, keep: Collection[str] = ()) -> "ConfigError":
        """The same error with its key and related names qualified by `group` (e.g. `data.p`), except the names in
        `keep` (settings the caller passed in: its own, not the group's)."""
        allowed = self.allowed
        related = [name for name in self.related if name not in keep]
        for name in related:  # a whole name only: not part of a longer or already-qualified one
            allowed = re.sub(rf"(?<![\w.]){re.escape(name)}(?!\w)", f"{group}.{name}", allowed)
        key = self.key if self.key in keep else f"{group}.{self.key}"
        qualified = {name: f"{group}.{name}" for name in related}
        return type(self)(key, self.value, allowed, [qualified.get(name, name) for name in self.related])


def require(condition: bool, key: str, value: Any, allowed: str, related: Sequence[str] = ()) -> None:
    """Raise `ConfigError(key, value, allowed, related)` unless `condition` holds."""
    if not condition:
        raise ConfigError(key, value, allowed, related)


@contextmanager
def settings_of(slot: str, passed: Collection[str] = ()) -> Iterator[None]:
    """Errors of a part built inside another name its settings under `slot` (`ffn.d_hidden`); `passed`: the
    arguments the builder gave the part (`d_model`), which are the builder's own settings and stay unqualified."""
    try:
        yield
    except ConfigError as err:
        raise err.under(slot, keep=passed) from err


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
