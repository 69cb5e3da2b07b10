"""The run directory: where each stage's shards live, and how they are written.

Layout (all under the runs root)::

    <run_id>/config.json                      the resolved RunConfig the run was created with (and its
                                              data files' digests: shared/runtime/data_inputs.py)
    <run_id>/prompts/shard_00000.jsonl        the prompt set, split into shards once
    <run_id>/iter_<t>/<stage>/shard_00000.jsonl       a shard's output rows
    <run_id>/iter_<t>/<stage>/shard_00000.done.json   its counts and timings: written LAST
    <run_id>/iter_<t>/<stage>/manifest.json           the stage's totals once all shards are done

Every file is written to a temporary name in the same directory and renamed, so a reader never sees
half a file. A shard is complete exactly when its ``.done.json`` exists: a crash before that leaves
no completion record, and re-running the shard rewrites the same (deterministic) output.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


def write_atomic(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` so that the file appears whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: object) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[object]) -> int:
    """Write rows as JSON lines atomically; returns the number of rows."""
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    write_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def file_sha256(path: Path) -> str:
    """Content hash of a (possibly large) file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


FORK_RECORD = "fork.json"
"""In a forked run: the source run, the stages reused from it, and where and why reuse stopped."""


@dataclass(frozen=True)
class RunPaths:
    """Names of everything in one run's directory."""

    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def changes(self) -> Path:
        """Append-only journal, one line per finished shard or stage: its size is the run's version.

        Readers (the API's run view) compare its size instead of re-reading every manifest; appends
        are atomic (O_APPEND) from any number of workers, and the size only grows, so a change is
        never missed the way an mtime of coarse granularity can miss two changes in one tick.
        """
        return self.root / ".changes"

    def note_change(self, what: str) -> None:
        """Record that the run's files changed (after the change is on disk)."""
        fd = os.open(self.changes, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (what.replace("\n", " ") + "\n").encode())
        finally:
            os.close(fd)

    def change_stamp(self) -> tuple[int, int] | None:
        """(inode, size) of the change journal; None for a run made before it existed."""
        try:
            st = os.stat(self.changes)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    def prompt_shard(self, shard: int) -> Path:
        return self.root / "prompts" / f"shard_{shard:05d}.jsonl"

    def num_prompt_shards(self) -> int:
        return len(list((self.root / "prompts").glob("shard_*.jsonl")))

    def stage_dir(self, iteration: int, stage: str) -> Path:
        return self.root / f"iter_{iteration}" / stage

    def shard(self, iteration: int, stage: str, shard: int) -> Path:
        return self.stage_dir(iteration, stage) / f"shard_{shard:05d}.jsonl"

    def shard_done(self, iteration: int, stage: str, shard: int) -> Path:
        return self.stage_dir(iteration, stage) / f"shard_{shard:05d}.done.json"

    def manifest(self, iteration: int, stage: str) -> Path:
        return self.stage_dir(iteration, stage) / "manifest.json"

    def hub_record(self, role: str, version: int) -> Path:
        """The last push of ``role`` v<version> to a hub (``shared.records.HubPush``)."""
        return self.root / "hub" / f"{role}-v{version}.json"

    def data_file(self, iteration: int, name: str) -> Path:
        """Files of the assembled training data, e.g. ``pairs.jsonl`` and ``rft.jsonl``."""
        return self.stage_dir(iteration, "assemble") / name
