"""A running shard's finished items, kept on disk as they finish, so a killed worker loses only the rest.

A shard's output is written once, whole and atomically (:mod:`shared.runtime.artifacts`), when the
shard is done. For a shard that takes tens of minutes (a refine shard of 64 trees on a CPU), a stopped
process would otherwise lose every finished tree with it. The stage appends each finished item to
``shard_<n>.jsonl.partial`` beside the output (one JSON line, flushed and fsynced); a retry of the shard
reads them back, works only on what is missing, writes the whole output as before and removes the
partial file.

Each line carries a ``key`` that names the item (a tree's ``<prompt id>#<response index>``) and the
``fingerprint`` of what produced it (the stage's config hash and the model version): lines of another
fingerprint are ignored, never reused. A last line cut by a crash is ignored too. The name does not
end in ``.jsonl``, so readers of finished shards (``shard_*.jsonl``) never see it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("spar.stages")  # in the run's event log, with the stage events

SUFFIX = ".partial"


class PartialShard:
    """The items a shard finished so far: :meth:`load` them on a retry, :meth:`add` each new one."""

    def __init__(self, output: Path, fingerprint: str) -> None:
        self.path = output.with_name(output.name + SUFFIX)
        self.fingerprint = fingerprint
        self._line_start_checked = False

    def load(self) -> dict[str, dict[str, Any]]:
        """Items kept by an earlier attempt with this fingerprint, by key (empty when none)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return {}
        items: dict[str, dict[str, Any]] = {}
        foreign = broken = 0
        for line in lines:
            try:
                entry = json.loads(line)
                key, item, fingerprint = entry["key"], entry["item"], entry["fingerprint"]
            except (ValueError, KeyError, TypeError):
                broken += 1  # a line cut by the crash that interrupted the attempt
                continue
            if fingerprint != self.fingerprint:
                foreign += 1
                continue
            items[str(key)] = item
        if foreign or broken:
            log.warning(
                "partial shard lines ignored",
                extra={
                    "event": "partial.ignored",
                    "path": str(self.path),
                    "foreign": foreign,
                    "broken": broken,
                },
            )
        return items

    def add(self, key: str, item: dict[str, Any]) -> None:
        """Append one finished item; on disk before this returns."""
        line = json.dumps({"key": key, "fingerprint": self.fingerprint, "item": item}, ensure_ascii=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            if not self._line_start_checked:  # a line cut by a crash must not swallow this one
                self._line_start_checked = True
                if f.tell() > 0 and not self._ends_with_newline():
                    f.write("\n")
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def remove(self) -> None:
        """Once the shard's whole output is written, its partial file has served."""
        self.path.unlink(missing_ok=True)
