"""The settings that tell a report's runs apart: the table a reader needs beside a tuning sweep.

Tuning points forked from one config differ in one or two fields (``--set
train_actor.learning_rate=2e-5``), and the arms of an experiment in a few (``judge.backend``,
``data.pairs_from``); their names alone do not say which values were tried. The table is built
from each run's recorded ``config.json``, so it cannot disagree with what the runs computed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from shared.config import RunConfig

IGNORED = frozenset({"name"})
"""Top-level fields that name a run rather than change what it computes."""
_ABSENT = object()


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The recorded config with every field a later release added at its default: a run created
    before a field existed ran as its default says, which is no difference between runs."""
    try:
        return RunConfig.model_validate(config).model_dump(mode="json")
    except ValueError:  # not a config this release reads: compare it as recorded
        return config


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train_actor": {"beta": 0.1}}`` -> ``{"train_actor.beta": 0.1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{dotted}.")
        else:
            flat[dotted] = value
    return flat


def differing_settings(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The dotted fields whose value is not the same in every config (a field some configs lack
    counts as differing), in sorted order; :data:`IGNORED` fields left out."""
    return _differing([flatten(c) for c in configs])


def _differing(flats: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = sorted({k for f in flats for k in f if k.split(".", 1)[0] not in IGNORED})
    return [k for k in keys if len({_cell(f.get(k, _ABSENT)) for f in flats}) > 1]


def _cell(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value, sort_keys=True)


def settings_rows(
    names: Sequence[str], configs: Sequence[Mapping[str, Any]]
) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per run, one column per differing setting; no setting column when
    the configs differ only in their names."""
    flats = [flatten(c) for c in configs]
    keys = _differing(flats)
    rows = [[name, *(_cell(f.get(k, _ABSENT)) for k in keys)] for name, f in zip(names, flats, strict=True)]
    return ["run", *keys], rows
