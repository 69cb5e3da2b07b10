"""Structured logs: one JSON object per line, with the ``extra`` fields a call site passes.

Every run writes its events to ``<run>/events.jsonl``; ``--log-json`` also prints them on stderr
(for log shippers), otherwise the terminal shows progress bars and only warnings.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of its message with terminal colours
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(events_file: Path | None = None, json_stderr: bool = False, level: int = logging.INFO) -> None:
    root = logging.getLogger("spar")
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if events_file is not None:
        events_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(events_file, encoding="utf-8")
        file_handler.setFormatter(JsonFormatter())
        root.addHandler(file_handler)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(
        JsonFormatter() if json_stderr else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    stderr.setLevel(level if json_stderr else logging.WARNING)
    root.addHandler(stderr)
    root.propagate = False


def adopt(name: str) -> None:
    """Give another library's logger (``uvicorn``) spar's handlers, so that its lines are JSON too."""
    theirs = logging.getLogger(name)
    for handler in list(theirs.handlers):
        theirs.removeHandler(handler)
    for handler in logging.getLogger("spar").handlers:
        theirs.addHandler(handler)
    theirs.setLevel(logging.getLogger("spar").level)
    theirs.propagate = False


def worker_json() -> None:
    """A worker's logs, RQ's included, as JSON lines on stderr (the format the API writes).

    RQ's own lines carry a job's description and id as they are stored in Redis; printed as text, a
    description holding a newline wrote whatever forged lines a planted job asked for. As fields of
    a JSON object every control character is escaped. Called in the worker and again in its
    spawned scheduler process (:class:`shared.runtime.rq_compat.SparScheduler`), which starts bare.
    """
    configure(None, json_stderr=True)
    adopt("rq")  # rq.worker, rq.job, rq.queue, rq.registry, rq.scheduler: RQ adds no handler then
