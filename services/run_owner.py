"""Which ``spar run`` process is running a run directory, so that two never run the same one.

Why: a run is continued with ``spar run --resume RUN_DIR``, often from a script or a queue in the
background. Started twice (a queue restarted while its arm still runs, a second terminal), both
processes worked the same shards: each shard's output is written atomically, so nothing broke, but
every stage cost twice, on a machine whose cores were the budget. And nothing could tell a
background run that had died from one still working (``spar status``).

``<run>/.owner.json`` names the process (pid, host, start, command). It is written when ``spar
run`` starts working on the run and removed when it stops; while it runs, a thread touches the file
every :data:`HEARTBEAT_S` seconds. A second ``spar run`` of the run is refused while the owner is
alive: on this host, its pid exists and the file was touched lately; on another host (a shared
volume), the file was touched within :data:`STALE_S`. A process killed outright leaves the file
behind; it is taken over once the owner is found gone, so ``--resume`` after a crash needs nothing.
The service's workers do not use it: the scheduler runs each shard as one job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel, Field

from shared.errors import RunConflictError
from shared.runtime.artifacts import RunPaths, read_json, write_json_atomic

log = logging.getLogger("spar.run")

OWNER_FILE = ".owner.json"
HEARTBEAT_S = 30.0
"""How often the owning process touches its file."""
STALE_S = 150.0
"""An owner file untouched for this long belongs to a process that is gone (five missed beats)."""


class RunOwner(BaseModel):
    """The ``spar run`` process working on a run."""

    pid: int
    host: str
    started_at: float = Field(description="Epoch seconds.")
    command: str = ""


def owner_path(paths: RunPaths) -> Path:
    return paths.root / OWNER_FILE


def read_owner(paths: RunPaths) -> tuple[RunOwner, float] | None:
    """The recorded owner and the seconds since its last heartbeat (None: no owner file)."""
    path = owner_path(paths)
    try:
        owner = RunOwner.model_validate(read_json(path))
        age = max(time.time() - path.stat().st_mtime, 0.0)
    except (OSError, ValueError):  # none, removed meanwhile, or damaged: no owner to respect
        return None
    return owner, age


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def is_alive(owner: RunOwner, age: float) -> bool:
    """Whether the recorded owner is still working: a recent heartbeat, and on this host a pid
    that still exists."""
    if age > STALE_S:
        return False
    if owner.host == socket.gethostname():
        return owner.pid != os.getpid() and _pid_exists(owner.pid)
    return True


class RunClaim:
    """This process's ownership of a run: heartbeats until :meth:`release`."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self.owner = RunOwner(
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=time.time(),
            command=" ".join(os.path.basename(a) if k == 0 else a for k, a in enumerate(sys.argv))[:500],
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="spar-run-owner", daemon=True)

    def _ours(self) -> bool:
        found = read_owner(self.paths)
        return found is not None and found[0].pid == self.owner.pid and found[0].host == self.owner.host

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                if self._ours():
                    os.utime(owner_path(self.paths))

    def start(self) -> RunClaim:
        write_json_atomic(owner_path(self.paths), self.owner.model_dump())
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            if self._ours():
                owner_path(self.paths).unlink()


def claim_run(paths: RunPaths) -> RunClaim:
    """Become the run's owner, or raise :class:`RunConflictError` naming the live owner and the fix."""
    found = read_owner(paths)
    if found is not None:
        owner, age = found
        if is_alive(owner, age):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.started_at))
            stop = f"(`kill {owner.pid}`)" if owner.host == socket.gethostname() else f"on {owner.host}"
            raise RunConflictError(
                f"run {paths.root} is being run by pid {owner.pid} on {owner.host} since {since} "
                f"(last heartbeat {age:.0f} s ago: {owner.command}); watch it with `spar status "
                f"{paths.root}`, or stop it {stop} before running it again"
            )
        log.warning(
            "the run's previous process is gone; taking the run over",
            extra={"event": "run.takeover", "pid": owner.pid, "host": owner.host, "age_s": round(age)},
        )
    return RunClaim(paths).start()


def owner_line(paths: RunPaths) -> str:
    """How ``spar status`` says who runs the run: alive, gone, or nobody recorded."""
    found = read_owner(paths)
    if found is None:
        return "no spar run process recorded (stopped, finished, or run by the service's workers)"
    owner, age = found
    if is_alive(owner, age) or owner.pid == os.getpid():
        return f"running: pid {owner.pid} on {owner.host}, heartbeat {age:.0f} s ago"
    gone = f"not running: its process (pid {owner.pid} on {owner.host}) is gone"
    return f"{gone}; `spar run --resume` continues it"
