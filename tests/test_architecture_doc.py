"""docs/architecture.md stays true: every path and dotted module it names exists, and every top-level package (and
launch.py) has its place in it."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()
PACKAGES = ("core", "nets", "datamodules", "regularizers", "lightning_modules", "callbacks", "runtime", "analysis",
            "viewer", "hydra_plugins", "reproduce", "bench")


def named_paths() -> set[str]:
    """Paths the document names: `a/b.py`, `a/b/` and a/b.py outside backticks, for files of the project."""
    found = set(re.findall(r"(?<![\w./-])((?:[a-z_]+/)+(?:[a-z_]+\.(?:py|yaml|md))?)(?![\w/])", DOC))
    tops = {p.name for p in ROOT.iterdir()} | {"runs"}
    return {path for path in found if path.split("/")[0] in tops and not path.startswith("runs/")}


def named_modules() -> set[str]:
    """Dotted modules in backticks that start with a package of the project: `nets.kernels.fla_choice` (a trailing
    `.name()` or `.Name` is an attribute, checked by import)."""
    found = set()
    prose = re.sub(r"```.*?```", "", DOC, flags=re.S)  # fenced blocks would pair their backticks with the prose's
    for text in re.findall(r"`([^`]+)`", prose):
        match = re.fullmatch(r"((?:[a-z_]+\.)+[A-Za-z_]+)(?:\(\))?", text)
        if match and match.group(1).split(".")[0] in PACKAGES:
            found.add(match.group(1))
    return found


@pytest.mark.parametrize("path", sorted(named_paths()))
def test_every_path_it_names_exists(path):
    assert (ROOT / path).exists(), f"docs/architecture.md names {path}, which does not exist"


def longest_module(dotted: str) -> tuple[str, str]:
    """(the longest importable module that `dotted` starts with, the rest)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            if importlib.util.find_spec(".".join(parts[:end])) is not None:
                return ".".join(parts[:end]), ".".join(parts[end:])
        except ModuleNotFoundError:  # a name under a module that is not a package
            continue
    return "", dotted


CONFIG_GROUPS = {p.name for p in (ROOT / "conf").iterdir() if p.is_dir()}


@pytest.mark.parametrize("dotted", sorted(named_modules()))
def test_every_module_it_names_exists(dotted):
    module, rest = longest_module(dotted)
    if dotted.split(".")[0] in CONFIG_GROUPS and "." not in module:
        return  # a config key (`callbacks.grokking_time.metric`), not a module
    assert module, f"docs/architecture.md names {dotted}: no such module"
    if rest:
        assert "." not in rest and hasattr(importlib.import_module(module), rest), (
            f"docs/architecture.md names {dotted}: {module} has no {rest}")


def test_every_top_level_package_is_in_it():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")
                and (any(p.glob("__init__.py")) or any(p.glob("*/__init__.py")))} - {"tests"}
    assert set(PACKAGES) == packages, "update PACKAGES and the document"
    for name in [*PACKAGES, "launch.py"]:
        assert f"{name}/" in DOC or f"`{name}`" in DOC or f"**`{name}" in DOC, f"{name} has no place in the document"


def test_it_names_enough_to_be_checked():
    assert len(named_paths()) > 40 and len(named_modules()) > 3
