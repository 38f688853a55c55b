"""Run folders: their names, and folders that two launches never share.

A run is named for its experiment and size (`transformer_grok`, `transformer_grok_cpu` at `size=cpu`): the folder
under runs/ and the W&B group. A multirun's folder is named for the runs it holds (`sweep_name`), not for the
default experiment: Hydra names it once, from a config composed without the swept values, before any job.

`hydra.run.dir` and `hydra.sweep.dir` name folders by the second (`runs/<name>/<date_time>`); two launches
in the same second used to write into one folder. `${unique_dir:<name>}` claims the folder by creating it
(atomic: exactly one process succeeds) and, when it is taken, claims `<name>_2`, `<name>_3`, ... instead. The
resolver is cached by its text, so every later reading of the key in the same launch (each job of a sweep, whose
own config no longer knows the other jobs' values) gets the same folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

SOURCE_SIZE = "source"  # the size a study's source ran at: conf/experiment/ as written (conf/size/source.yaml)
NAMED_BY = ("experiment", "size")  # the config groups a run's name is made of
LONGEST_NAME = 120  # characters of a multirun folder's name; a longer list of runs is shortened (file systems: 255)


def claim_dir(name: str) -> str:
    """Create and return the first of `name`, `name_2`, `name_3`, ... that did not exist yet."""
    base = Path(name)
    base.parent.mkdir(parents=True, exist_ok=True)
    attempt = 1
    while True:
        candidate = base if attempt == 1 else base.with_name(f"{base.name}_{attempt}")
        try:
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            attempt += 1


def run_name(experiment: str, size: str) -> str:
    """`experiment` at its source size, else `<experiment>_<size>`, so runs of two sizes never share a folder."""
    return experiment if size == SOURCE_SIZE else f"{experiment}_{size}"


def sweep_name(overrides: Sequence[str], preset_params: Any, choices: Any, loader: Any = None) -> str:
    """The folder name of a multirun: its runs' names joined by `+` when the command line sweeps the experiment or
    the size (`-m experiment=transformer_grok,routed_none` -> `transformer_grok+routed_none`), `sweep_<preset>` when
    a sweep preset does (`sweep=ffn_type` -> `sweep_ffn_type`), else the one run name every job shares.

    `overrides`: the command line's (Hydra's `hydra.overrides.task`, swept values included); `preset_params`: the
    presets' `hydra.sweeper.params`; `choices`: `hydra.runtime.choices` of the config composed without the swept
    values; `loader`: Hydra's config loader, which expands `glob(...)` sweeps (None: globs are not expanded)."""
    given = group_choices(overrides, loader)
    if preset_params and any(group in preset_params and group not in given for group in NAMED_BY):
        return "sweep_" + "+".join(given.get("sweep", []))  # (a group on the command line replaces a preset's sweep)
    names = [run_name(experiment, size) for experiment in given.get("experiment", [choices["experiment"]])
             for size in given.get("size", [choices["size"]])]
    return joined(list(dict.fromkeys(names)))


def group_choices(overrides: Sequence[str], loader: Any) -> dict[str, list[str]]:
    """{group: the options chosen, in the order given} for the experiment, size and sweep presets that `overrides`
    choose (one option, a list of presets, or a sweep over options)."""
    given = {}
    for override in OverridesParser.create(config_loader=loader).parse_overrides(list(overrides)):
        if override.key_or_group in (*NAMED_BY, "sweep") and override.package is None and not override.is_delete():
            value = override.value()
            given[override.key_or_group] = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                                            else list(map(str, value)) if isinstance(value, list) else [str(value)])
    return given


def joined(names: Iterable[str]) -> str:
    """`a+b+c`; past LONGEST_NAME characters `a+<n>_more`, n the names left out (each job's summary names its run)."""
    names = list(names)
    whole = "+".join(names)
    return whole if len(whole) <= LONGEST_NAME else f"{names[0]}+{len(names) - 1}_more"


def sweep_name_of(_root_: DictConfig) -> str:
    """`${sweep_name:}`: sweep_name of the config being resolved (in a multirun, the one without swept values)."""
    hydra = _root_.hydra
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    return sweep_name(list(hydra.overrides.task), OmegaConf.select(hydra, "sweeper.params"), hydra.runtime.choices,
                      loader)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("unique_dir"):
        OmegaConf.register_new_resolver("unique_dir", claim_dir, use_cache=True)
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("sweep_name"):
        OmegaConf.register_new_resolver("sweep_name", sweep_name_of)
