"""Train / val / test fractions, checked alike by every task that splits a finite set of examples."""
from __future__ import annotations

from core.errors import ConfigError, require


def check_fractions(train_fraction, val_fraction, test_fraction) -> None:
    """Each fraction in range and together at most 1 (val: null takes the rest, so the others must leave some).
    A bad sum names the fraction most likely just changed: test (off by default), then val, then train."""
    require(isinstance(train_fraction, (int, float)) and 0 < train_fraction < 1, "train_fraction",
            train_fraction, "a number in (0, 1)")
    require(isinstance(test_fraction, (int, float)) and 0 <= test_fraction < 1, "test_fraction",
            test_fraction, "a number in [0, 1)")
    if val_fraction is not None:
        require(isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1, "val_fraction",
                val_fraction, "a number in (0, 1), or null for the rest")
    total = train_fraction + (val_fraction or 0) + test_fraction
    if total <= 1 + 1e-9 and (val_fraction is not None or total < 1):
        return
    parts = {"train": train_fraction, "val": val_fraction, "test": test_fraction}
    given = {name: value for name, value in parts.items() if value}  # val: null = the rest, test: 0 = none
    key = next(name for name in ("test", "val", "train") if name in given)
    terms = " + ".join(f"{name} {value:g}" for name, value in given.items())
    room = "" if val_fraction is not None else " with room for val"
    raise ConfigError(f"{key}_fraction", given[key], f"train + val + test fractions <= 1{room} ({terms} = {total:g})")
