"""Run folders: their names, and folders that two launches never share.

A run is named for its experiment and size (`transformer_grok`, `transformer_grok_cpu` at `size=cpu`): the folder
under runs/ and the W&B group.

`hydra.run.dir` and `hydra.sweep.dir` name folders by the second (`runs/<name>/<date_time>`); two launches
in the same second used to write into one folder. `${unique_dir:<name>}` claims the folder by creating it
(atomic: exactly one process succeeds) and, when it is taken, claims `<name>_2`, `<name>_3`, ... instead. The
resolver is cached, so every later reading of the key in the same launch (each job of a sweep) gets the same
folder.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

SOURCE_SIZE = "source"  # the size a study's source ran at: conf/experiment/ as written (conf/size/source.yaml)


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


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("unique_dir"):
        OmegaConf.register_new_resolver("unique_dir", claim_dir, use_cache=True)
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
