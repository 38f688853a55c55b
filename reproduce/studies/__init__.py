"""The studies the suite reproduces, in the order the suite runs them: each a module with its `STUDY` (its source,
parts, runs at each size, measures and headline figures); and the parts `--part` names."""
from __future__ import annotations

from typing import Sequence

from core.errors import ConfigError
from reproduce.studies import conditions, grokfast, hybrid, least_action, moe, mqar, nanda, routed
from reproduce.suite import Part, Study

STUDIES = (nanda.STUDY, routed.STUDY, least_action.STUDY, conditions.STUDY, grokfast.STUDY, moe.STUDY, hybrid.STUDY,
           mqar.STUDY)


def all_studies() -> list[Study]:
    return list(STUDIES)


def all_parts() -> dict[str, tuple[Study, Part]]:
    """Every part by name, with its study, in suite order."""
    return {part.name: (study, part) for study in all_studies() for part in study.parts}


def select_parts(names: Sequence[str] | None) -> list[tuple[Study, Part]]:
    """The parts `--part` names: a part's name, or a study's (all its parts); none given: every part."""
    parts = all_parts()
    if not names:
        return list(parts.values())
    chosen: list[tuple[Study, Part]] = []
    studies = {study.name: study for study in all_studies()}
    for name in names:
        if name in studies:
            picked = [(studies[name], part) for part in studies[name].parts]
        elif name in parts:
            picked = [parts[name]]
        else:
            allowed = ", ".join([*studies, *(p for p in parts if p not in studies)])
            raise ConfigError("--part", name, f"a study or part: {allowed}")
        chosen += [item for item in picked if item not in chosen]
    return chosen
