"""The data files a run's stages read from outside the run directory, pinned by their content.

A config names files that stages read long after the run was created: stage 0's SFT data
(``init.actor_data``, ``init.refiner_data``) and the eval stage's held-out judge pairs and
validation prompts, read again every iteration. The stage table declares them among a stage's
``reads`` (``shared.stages``). Their paths enter the stage hashes, their contents did not: a file
edited in place between a run's start and its ``--resume``, or between a source run and a fork of
it, changed a stage's input without anything noticing, and a fork reused a stage whose input was
no longer the file it was computed from.

So a new run records each such file's sha256 in its ``config.json`` (``inputs``). A stage that
reads one checks it before it runs (``workers.stages.run_stage``), ``spar run --resume`` and the
API's resume check them all before any work, and a fork reuses a stage (or takes an evaluation)
only when the files it read have equal digests in both runs. Comparing contents also lets a fork
reuse a run made in another checkout or on another mount, whose paths (and so stage hashes) differ
while its files are the same: :func:`content_view`. A run created before this was
recorded has no ``inputs`` and is checked as before: by path only.

The prompts file is not among them: it is split into the run's own ``prompts/`` shards when the
run is created and never read again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shared.config import RunConfig, with_fields
from shared.errors import InputChangedError
from shared.runtime.artifacts import RunPaths, file_sha256, read_json
from shared.stages import STAGE_TABLE, stage

INPUTS_KEY = "inputs"
"""Key of ``config.json`` holding ``{field: {"path", "sha256", "bytes"}}`` for each data input."""


def stage_data_fields(stage_name: str) -> tuple[str, ...]:
    """The config fields (dotted names) of the data files ``stage_name`` reads.

    A ``reads`` entry names either a file of the run directory (it contains a ``/``) or a config
    field such as ``evaluation.judge_data``.
    """
    return tuple(entry for entry in stage(stage_name).reads if "/" not in entry and "." in entry)


DATA_FIELDS: tuple[str, ...] = tuple(
    dict.fromkeys(field for s in STAGE_TABLE for field in stage_data_fields(s.name))
)
"""Every config field naming a data file some stage reads, in pipeline order."""


def field_value(config: RunConfig, dotted: str) -> str | None:
    """The value of a dotted config field (None where a section or the field is unset)."""
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return str(node)


def input_digests(config: RunConfig) -> dict[str, dict[str, Any]]:
    """What a new run records: each set data field's path, sha256 and size (existing files only;
    a missing one is the config check's to report)."""
    out: dict[str, dict[str, Any]] = {}
    for field in DATA_FIELDS:
        value = field_value(config, field)
        if value is not None and Path(value).is_file():
            path = Path(value)
            out[field] = {"path": value, "sha256": file_sha256(path), "bytes": path.stat().st_size}
    return out


def _recorded(record: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    recorded = record.get(INPUTS_KEY)
    return recorded if isinstance(recorded, dict) else None


def recorded_inputs(paths: RunPaths) -> dict[str, dict[str, Any]] | None:
    """The digests ``paths``'s run recorded when it was created (None: made before they were)."""
    return _recorded(read_json(paths.config))


def check_inputs(
    paths: RunPaths, fields: Iterable[str] = DATA_FIELDS, config: RunConfig | None = None
) -> None:
    """Raise :class:`InputChangedError` if a recorded data file among ``fields`` is gone or no
    longer has the content the run was created with; nothing to check for an older run.

    The file read is the one the config names (the path the API confined to its data root), never
    a path taken from the record itself. ``config``: the run's config when the caller has parsed
    it already (a stage's context), else it is read from the run's ``config.json``."""
    fields = tuple(fields)
    if not fields:  # most stages read no data file
        return
    record = read_json(paths.config)
    recorded = _recorded(record)
    if recorded is None:
        return
    config = config if config is not None else RunConfig.model_validate(record["config"])
    for field in fields:
        entry, value = recorded.get(field), field_value(config, field)
        if entry is None or value is None:
            continue
        path, then = Path(value), str(entry["sha256"])
        fix = (
            f"put the original back (sha256 {then[:16]}...), or start a new run; "
            f"`spar run CONFIG --fork {paths.root}` reuses the stages that do not read it"
        )
        if not path.is_file():
            raise InputChangedError(f"{field}: {path} no longer exists; {fix}")
        now = file_sha256(path)
        if now != then:
            raise InputChangedError(
                f"{field}: {path} changed since the run was created (sha256 {then[:16]}... then, "
                f"{now[:16]}... now); {fix}"
            )


def differing_records(
    a: dict[str, dict[str, Any]] | None, b: dict[str, dict[str, Any]] | None, fields: Iterable[str]
) -> list[str]:
    """The fields among ``fields`` whose recorded files differ in content between two runs' records
    (:func:`recorded_inputs`, read once by the caller).

    Only files both runs recorded are compared; a field one of them did not record (an older run,
    or a field set in one config only) is left to the stage hash, which holds the path.
    """
    a, b = a or {}, b or {}
    return [f for f in fields if f in a and f in b and a[f]["sha256"] != b[f]["sha256"]]


def content_view(config: RunConfig, recorded: dict[str, dict[str, Any]] | None) -> RunConfig | None:
    """``config`` with each set data field's path replaced by ``sha256:<digest>`` of the file the
    run recorded, so that two runs' stage hashes compare what their stages read, not where it lay.
    None when a set data field has no recorded digest (a run made before they were recorded)."""
    update: dict[str, str] = {}
    for field in DATA_FIELDS:
        if field_value(config, field) is None:
            continue
        entry = (recorded or {}).get(field)
        if entry is None:
            return None
        update[field] = f"sha256:{entry['sha256']}"
    return with_fields(config, update)
