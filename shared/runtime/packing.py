"""Packing a run without its model weights, and unpacking it to continue on another machine.

Why: weights are most of a run's bytes (a 135M actor is half a gigabyte per version, an 8B one
16 GB), while everything else -- prompts, samples, judgments, trees, pairs, evaluations, records --
is a few megabytes, and every trained version can be made again: its training is deterministic
given its parent, its data file and the seed. A run that must outlive its machine (a spot node, a
workstation that is replaced, a cluster quota) travels as that small part.

``pack_run`` writes a ``.tar.gz`` of the run without weight files, step checkpoints or merged
adapters, and ``pack.json`` listing each version it left out with its weights' digest.
``unpack_run`` lays the run out again and, for each such version, removes the completion records
of the stage that trained it and leaves the digest under ``rebuild/``: ``spar run --resume`` trains
the version again from its recorded data and publishes it only if its weights match the digest bit
for bit (``versions.check_rebuilt``), because the run's later stages were computed with the original.

A run that is being worked on can be packed: a shard's completion record is written last and
atomically, so the pack takes only the records that existed when packing began (a shard finished
during packing is simply done again after unpacking).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
import socket
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigError, RunConflictError
from shared.names import RUN_NAME_PATTERN

from .artifacts import RunPaths, read_json, write_json_atomic
from .shards import run_finished
from .versions import (
    METADATA,
    pending_rebuilds,
    read_metadata,
    rebuild_record,
    version_dir,
    weight_files,
    weights_digest,
)

PACK_RECORD = "pack.json"
"""In a packed run: when and where it was packed, and the versions left out to be rebuilt."""

_VERSION = re.compile(r"^v(\d+)$")
_RECORD = re.compile(r"^(shard_\d+\.done\.json|manifest\.json)$")
_SKIPPED_DIRS = ("checkpoints",)  # step checkpoints: a published version no longer needs them


@dataclass(frozen=True)
class PackedVersion:
    """A version whose weights the pack left out, and the stage that trains it again."""

    role: str
    version: int
    weights_sha256: str
    stage: str
    iteration: int
    bytes_left_out: int

    @property
    def label(self) -> str:
        return f"{self.role} v{self.version}"


def producing_stage(version: int, role: str) -> tuple[int, str]:
    """(iteration, stage) that publishes ``role`` v<version>: stage 0's SFT for v0, else the
    previous iteration's training of the role."""
    return (0, "init") if version == 0 else (version - 1, f"train_{role}")


def _published_versions(paths: RunPaths) -> list[tuple[str, int, Path]]:
    found = []
    for role in ("actor", "refiner"):
        folder = paths.root / "models" / role
        if not folder.is_dir():
            continue
        for child in folder.iterdir():
            match = _VERSION.match(child.name)
            if match and child.is_dir() and (child / METADATA).is_file():
                found.append((role, int(match.group(1)), child))
    return sorted(found)


def _left_out(paths: RunPaths) -> list[PackedVersion]:
    """Every published version that has weight files, with their digest (recorded, or computed now
    for a version published before digests were recorded)."""
    out = []
    for role, version, folder in _published_versions(paths):
        files = weight_files(folder)
        if not files:  # an alias: metadata only, packed whole
            continue
        meta = read_metadata(folder)
        digest = (meta.weights_sha256 if meta is not None else None) or weights_digest(folder)
        assert digest is not None
        iteration, stage = producing_stage(version, role)
        size = sum(f.stat().st_size for f in files)
        out.append(PackedVersion(role, version, digest, stage, iteration, size))
    return out


def _keep(rel: Path, records: set[Path], left_out: set[Path]) -> bool:
    """Whether the file at ``rel`` (relative to the run) goes into the pack."""
    parts = rel.parts
    if any(part.startswith(".") for part in parts):  # temporaries, the owner lock, the change stamp
        return False
    if parts[0] in _SKIPPED_DIRS:
        return False
    if parts[0] == "models":
        # a version folder's metadata (and card) travel; its weights are rebuilt; merged adapters
        # (v<k>-merged) are made again from the adapter when needed
        if len(parts) < 4 or not _VERSION.match(parts[2]):
            return False
        folder = Path(*parts[:3])
        if folder in left_out:
            return parts[3] == METADATA
        return True
    if _RECORD.match(rel.name):
        return rel in records  # complete when packing began
    return True


def finished_when_packed(run_dir: Path) -> bool:
    """Whether an unpacked run was finished when it was packed and has only its weights to rebuild.

    Its results (samples, pairs, evaluations) are all there; resuming it would retrain every version
    only to publish weights nothing reads. A queue of arms skips it (``examples/experiment/queue.sh``);
    ``spar run --resume`` still rebuilds it when asked.
    """
    paths = RunPaths(Path(run_dir))
    record = paths.root / PACK_RECORD
    try:
        finished = bool(read_json(record).get("finished")) if record.is_file() else False
    except (OSError, ValueError):
        return False
    return finished and bool(pending_rebuilds(paths))


def pack_run(run_dir: Path, out: Path) -> tuple[Path, list[PackedVersion]]:
    """Write ``run_dir`` without its weights to the gzip tar ``out``; returns it and what was left out."""
    paths = RunPaths(Path(run_dir).resolve())
    if not paths.config.is_file():
        raise ConfigError(
            f"{run_dir} is not a run directory (no config.json): give the folder `spar run` made"
        )
    finished = run_finished(paths)  # before the records: a finished run's are all taken then
    # records first: whatever completes after this point is not taken (it is redone after unpacking)
    records = {p.relative_to(paths.root) for p in paths.root.glob("iter_*/*/*") if _RECORD.match(p.name)}
    versions = _left_out(paths)
    left_out = {version_dir(paths, v.role, v.version).relative_to(paths.root) for v in versions}
    record = {
        "run_id": paths.run_id,
        "packed_at": dt.datetime.now(dt.UTC).isoformat(),
        "host": socket.gethostname(),
        "versions": [v.__dict__ for v in versions],
        "finished": finished,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            blob = json.dumps(record, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(f"{paths.run_id}/{PACK_RECORD}")
            info.size, info.mtime, info.mode = len(blob), int(dt.datetime.now().timestamp()), 0o644
            tar.addfile(info, io.BytesIO(blob))
            for path in sorted(paths.root.rglob("*")):
                rel = path.relative_to(paths.root)
                if path.is_file() and not path.is_symlink() and rel.name != PACK_RECORD:
                    if _keep(rel, records, left_out):
                        tar.add(path, arcname=f"{paths.run_id}/{rel.as_posix()}", recursive=False)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an archive is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out, versions


def _members(tar: tarfile.TarFile, archive: Path) -> str:
    """The run id the archive holds, after checking that every member is a plain file or folder
    inside that one run folder (nothing from the archive decides where a file lands outside it)."""
    names = tar.getmembers()
    tops = {Path(m.name).parts[0] for m in names if m.name}
    if len(tops) != 1:
        raise ConfigError(
            f"{archive}: not a run packed by `spar pack` (expected one run folder, found {len(tops)})"
        )
    run_id = tops.pop()
    if not re.match(RUN_NAME_PATTERN, run_id):
        raise ConfigError(f"{archive}: {run_id!r} is not a run id; pack the run with `spar pack`")
    for m in names:
        if not (m.isfile() or m.isdir()) or Path(m.name).is_absolute() or ".." in Path(m.name).parts:
            raise ConfigError(f"{archive}: member {m.name!r} is not a plain file inside the run folder")
    if f"{run_id}/{PACK_RECORD}" not in {m.name for m in names}:
        raise ConfigError(f"{archive}: no {PACK_RECORD}; it was not written by `spar pack`")
    return run_id


def unpack_run(archive: Path, runs_dir: Path) -> tuple[Path, list[PackedVersion]]:
    """Lay the packed run out under ``runs_dir`` and mark its left-out versions for rebuilding.

    Returns the run directory and the versions ``spar run --resume`` will train again.
    """
    archive, runs_dir = Path(archive), Path(runs_dir)
    if not archive.is_file():
        raise ConfigError(f"{archive}: no such archive; give the file `spar pack` wrote")
    try:
        tar = tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError) as exc:
        raise ConfigError(f"{archive}: not a gzip tar written by `spar pack` ({exc})") from exc
    with tar:
        run_id = _members(tar, archive)
        target = runs_dir / run_id
        if target.exists():
            raise RunConflictError(
                f"{target} exists already: continue it with `spar run --resume {target}`, or move it "
                "away to unpack the archive in its place"
            )
        runs_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=runs_dir, prefix=f".{run_id}.", suffix=".unpack"))
        try:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the library refuses what _members does
                tar.extractall(staging, filter="data")
            else:  # pragma: no cover - older 3.11: the members were checked above
                tar.extractall(staging)
            paths = RunPaths(staging / run_id)
            record = read_json(paths.root / PACK_RECORD)
            versions = [PackedVersion(**v) for v in record["versions"]]
            for v in versions:
                shutil.rmtree(version_dir(paths, v.role, v.version), ignore_errors=True)
                for done in paths.stage_dir(v.iteration, v.stage).glob("*"):
                    if _RECORD.match(done.name):
                        done.unlink()  # the stage runs again on --resume and publishes the version
                write_json_atomic(
                    rebuild_record(paths, v.role, v.version),
                    {
                        "weights_sha256": v.weights_sha256,
                        "packed_at": record["packed_at"],
                        "packed_on": record["host"],
                    },
                )
            # the journal (left out of the pack) starts here: readers see a changed run, and the
            # training progress of `spar status` counts only events written after this point
            paths.note_change(f"unpacked {archive.name}")
            os.rename(paths.root, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target, versions
