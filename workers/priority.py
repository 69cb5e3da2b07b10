"""Children in a new session keep their parent's low CPU priority.

The engine host and the training launcher start in a session of their own (``start_new_session``), so
that one signal ends their whole process tree. On Linux with ``sched_autogroup`` (the default on
desktop and many server kernels) a new session is also a new scheduling group at weight "nice 0",
and a process's nice value then only ranks it against processes of its own group. A worker started
with ``nice -n 19`` beside other work would therefore run its engine, where all the compute is, at
full weight against everything else on the machine: measured on a 2-core machine, a background
experiment started that way took as much CPU as the test suite beside it. Each child calls
:func:`keep_parent_priority` first thing, which sets its new group's nice to the larger of its own
nice value (inherited from the parent) and the parent's group nice. Raising a nice value needs no
privilege; where the kernel has no autogroups this does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def autogroup_nice(pid: int | str, proc: Path = PROC) -> int | None:
    """The nice value of ``pid``'s autogroup ("/autogroup-42 nice 19"), or None without autogroups."""
    try:
        text = (proc / str(pid) / "autogroup").read_text()
    except OSError:
        return None
    parts = text.split()
    try:
        return int(parts[parts.index("nice") + 1])
    except (ValueError, IndexError):
        return None


def keep_parent_priority(parent_pid: int | None = None, proc: Path = PROC) -> int | None:
    """Lower this process's autogroup to the parent's priority; returns the nice value set, or None.

    Never raises: priority is a courtesy to other work on the machine, not a reason to fail a job.
    """
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    current = autogroup_nice("self", proc)
    if current is None:  # no autogroups: the process nice value already ranks it machine-wide
        return None
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        own = 0
    target = max(own, autogroup_nice(parent_pid, proc) or 0)
    if target <= current:
        return None
    try:
        (proc / "self" / "autogroup").write_text(str(target))
    except OSError:
        return None
    return target
