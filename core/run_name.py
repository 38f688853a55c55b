"""A run's name, `<experiment>` at its source's size and `<experiment>_<size>` otherwise: the folder under runs/, the
W&B group, and `name` in every saved config (`${run_name:...}`). It sits on the ground floor so that a process
that never launched anything (`python -m analysis`, the viewer) resolves a saved config's name as the run did."""
from __future__ import annotations

from omegaconf import OmegaConf

SOURCE_SIZE = "source"  # the size a study's source ran at: conf/experiment/ as written (conf/size/source.yaml)


def run_name(experiment: str, size: str) -> str:
    """`experiment` at its source size, else `<experiment>_<size>`, so runs of two sizes never share a folder."""
    return experiment if size == SOURCE_SIZE else f"{experiment}_{size}"


def register_run_name() -> None:
    """The `${run_name:experiment,size}` resolver, once per process."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
