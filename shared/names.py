"""The one rule for names that become keys: run names, run ids and the queue's job ids.

A run's id is ``<name>-<UTC stamp>-<random hex>`` and each of its shards' job ids is
``<run id>-<iteration>-<stage>-<shard>``; RQ accepts only ``[A-Za-z0-9_-]`` in a job id. The
config's name pattern is built from the same characters, so a name the API accepts can never fail
later in the queue (a ``.`` once passed validation, then failed the run at its first enqueue).
"""

from __future__ import annotations

import re

ID_CHARS = "A-Za-z0-9_-"
"""The characters of a job id (RQ's rule) and so of every run name and run id."""
RUN_NAME_PATTERN = rf"^[A-Za-z0-9][{ID_CHARS}]{{0,63}}$"
"""A run name: a letter or digit, then at most 63 letters, digits, ``_`` or ``-``."""
RUN_NAME_HELP = "letters, digits, '_' and '-' (no '.'), starting with a letter or digit, at most 64"

_ID = re.compile(rf"[{ID_CHARS}]+")


def is_id(text: str) -> bool:
    """Whether ``text`` may be (part of) a job id."""
    return _ID.fullmatch(text) is not None
