"""A misspelled key on the command line, reported in one line with the closest existing settings; a renamed
option, in one line with what replaces it.

Hydra's own report of `python launch.py data.pp=5` is six lines that never say which settings exist. This reads
the overrides with Hydra's parser, composes the config once with the overrides that shape it (config group
choices, additions, deletions; a sweep's first value), and looks each plain `key=value` up in it.
"""
from __future__ import annotations

import contextlib
import difflib
import io
from typing import Any, Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from runtime.config.compose import CONF_DIR

# options after which the app does not run this config: help, shell completion, another config, a rerun
NOT_CHECKED = ("help", "hydra_help", "info", "shell_completion", "config_path", "config_name", "config_dir",
               "experimental_rerun")
# group options that were renamed -> what replaces them on the command line (the CPU twins became `size=cpu`)
RENAMED = {
    ("experiment", "transformer_grok_cpu"): "experiment=transformer_grok size=cpu",
    ("experiment", "nanda_grok_cpu"): "experiment=nanda_grok size=cpu",
    ("experiment", "routed_cpu"): "experiment=routed_none size=cpu",
    ("experiment", "conditions_study_cpu"): "experiment=conditions_study size=cpu",
    ("experiment", "grokfast_paper_cpu"): "experiment=grokfast_paper size=cpu",
    ("experiment", "hybrid_static_cpu"): "experiment=hybrid_static size=cpu",
    ("experiment", "hybrid_dynamic_cpu"): "experiment=hybrid_dynamic size=cpu",
    ("experiment", "mqar_cpu"): "experiment=mqar",
    ("lm_size", "cpu"): "size=cpu",
}


def unknown_key_message(args: Sequence[str]) -> str | None:
    """One line naming the first renamed option or override key that is not a setting (`args` as in
    sys.argv[1:]), or None when every key exists or the command line cannot be checked (then Hydra reports whatever
    is wrong, as usual)."""
    options = parse_command_line(args)
    if options is None or any(getattr(options, name, None) for name in NOT_CHECKED):
        return None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            plain, shaping = [], []
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(options.overrides)
            if (renamed := renamed_message(parsed)) is not None:
                return renamed
            for override in parsed:
                if not override.is_hydra_override():
                    (plain if is_plain_setting(override, loader) else shaping).append(override)
            cfg = compose("config", overrides=[as_single_run(override) for override in shaping])
    except Exception:  # a bad value, a missing group option, an unreadable sweep: Hydra's report will say which
        return None
    return next(filter(None, (missing_key_message(cfg, override.key_or_group) for override in plain)), None)


def renamed_message(overrides: Sequence[Override]) -> str | None:
    """One line for the first option of `overrides` (or of a sweep's options) that was renamed, else None."""
    for override in overrides:
        if override.is_delete():
            continue
        values = (override.sweep_string_iterator() if override.is_sweep_override()
                  else [override.get_value_element_as_str()])
        for value in values:
            if (instead := RENAMED.get((override.key_or_group, value))) is not None:
                return f"{override.key_or_group}={value} was renamed: use {instead}"
    return None


def parse_command_line(args: Sequence[str]) -> Any | None:
    """Hydra's own reading of the command line (flags apart from overrides), or None where it refuses it."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return get_args_parser().parse_args(list(args))
    except SystemExit:  # a bad flag, or --version: Hydra will say so itself
        return None


def is_plain_setting(override: Override, loader: Any) -> bool:
    """`key=value` (or a sweep of values) of an existing setting: neither added, deleted nor a group choice."""
    if override.is_add() or override.is_force_add() or override.is_delete() or override.package is not None:
        return False
    return not loader.get_group_options(override.key_or_group)


def as_single_run(override: Override) -> str:
    """The override as one job of a sweep would get it: a sweep's first value."""
    key = override.get_key_element()
    if override.value_type is None:  # `~key`
        return key
    if override.is_sweep_override():
        return f"{key}={next(iter(override.sweep_string_iterator()))}"
    return f"{key}={override.get_value_element_as_str()}"


def missing_key_message(cfg: DictConfig, key: str) -> str | None:
    """None when `key` (dotted) is a setting of `cfg`; else the one-line report with the closest settings."""
    parts = key.split(".")
    node: DictConfig | None = cfg
    for depth, part in enumerate(parts):
        if node is None:  # under a value, a list or an interpolation: not looked into
            return None
        if part not in node.keys():
            return unknown_key_line(cfg, node, parts[:depth], part, parts[depth + 1:])
        node = sub_config(node, part)
    return None


def unknown_key_line(cfg: DictConfig, level: DictConfig, parent: list[str], missing: str, rest: list[str]) -> str:
    """`missing` is not among the keys of `level` (at `parent`). Guess a close name at that level first (a typo),
    then a setting of a close name in another group (`data.hidden_dim` -> `model.hidden_dim`)."""
    key = ".".join([*parent, missing, *rest])
    every_key = dotted_keys(cfg)
    same_level = [".".join([*parent, name, *rest]) for name in difflib.get_close_matches(missing, list(level.keys()))]
    last = key.rpartition(".")[2]
    elsewhere = [k for k in every_key if difflib.get_close_matches(last, [k.rpartition(".")[2]], cutoff=0.8)]
    guesses = ([guess for guess in same_level if guess in every_key]
               or difflib.get_close_matches(key, elsewhere, n=1, cutoff=0))
    names = sorted(map(str, level.keys()))
    names = ", ".join([name for name in names if not name.startswith("_")] or names)  # `_target_` only if alone
    where = f"settings under {'.'.join(parent)}" if parent else "top-level settings"
    guess = f"; did you mean {guesses[0]}?" if guesses else ""
    return f"{key} is not a setting{guess} ({where}: {names})"


def dotted_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every key of `node`, nested ones as `a.b.c`, interpolations not followed."""
    keys = []
    for name in node.keys():
        key = f"{prefix}{name}"
        keys.append(key)
        if (child := sub_config(node, name)) is not None:
            keys.extend(dotted_keys(child, f"{key}."))
    return keys


def sub_config(node: DictConfig, name: Any) -> DictConfig | None:
    """The mapping of settings under `name`, without resolving anything; None for a value, list or interpolation."""
    if OmegaConf.is_interpolation(node, name) or OmegaConf.is_missing(node, name):
        return None
    child = node[name]
    return child if isinstance(child, DictConfig) else None
