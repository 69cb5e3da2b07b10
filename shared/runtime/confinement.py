"""Confinement at use: a file is checked where it is opened, not only where its path was accepted.

The API confines every path of a config to the data root when a run is created (and stores it
resolved through its links, ``services/runs.py: confine``). A link inside the data root can be
retargeted afterwards, and a run's own files can be replaced by links (a ``pairs.jsonl`` pointing
at ``/etc/passwd``), so the places that read check again:

* a worker, before a job reads anything a config names (:func:`check_config_paths`);
* a route, when it opens a run file (:func:`open_inside`): the file's real path must lie inside
  the run's directory, and the final component is opened without following a link.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from shared.config import RunConfig, path_fields


class OutsideRootError(PermissionError):
    """A path that resolves outside the folder it must stay in (the message names both)."""


def check_config_paths(config: RunConfig, root: Path) -> None:
    """Every path a config names must still resolve inside ``root`` (built-in model names pass)."""
    from .versions import is_builtin

    root = root.resolve()
    for where, value, kind in path_fields(config):
        if kind == "model" and is_builtin(value):
            continue
        target = Path(value).resolve()
        if not target.is_relative_to(root):
            raise OutsideRootError(
                f"{where}: {value} now resolves to {target}, outside the data root {root} "
                "(a link was changed after the run was created); the job reads nothing from it"
            )


def open_inside(path: Path, root: Path) -> BinaryIO:
    """``path`` opened for reading, refused when it leaves ``root`` through a link.

    Resolved first (every link followed) and checked; the resolved path is then opened with
    ``O_NOFOLLOW``, so a link swapped in between is refused rather than followed.
    """
    root = root.resolve()
    target = path.resolve()
    if not target.is_relative_to(root):
        raise OutsideRootError(f"{path.name} resolves outside the run's folder; it is not served")
    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    return os.fdopen(fd, "rb")
