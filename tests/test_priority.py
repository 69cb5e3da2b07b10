"""A child started in its own session keeps the worker's low CPU priority (workers/priority.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from workers.priority import autogroup_nice, keep_parent_priority

REPO = Path(__file__).resolve().parents[1]


def _run_niced(increment: int, script: str) -> tuple[int, subprocess.CompletedProcess[str]]:
    """``script`` under ``nice -n increment`` in a new session (what a worker's children get); returns
    the nice value it runs at (nice adds to this process's own) and the finished process."""
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + increment)
    done = subprocess.run(
        ["nice", "-n", str(increment), sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        start_new_session=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return expected, done


def _fake_proc(tmp_path: Path, parent: str | None, me: str | None) -> Path:
    for pid, text in (("41", parent), ("self", me)):
        if text is not None:
            (tmp_path / pid).mkdir()
            (tmp_path / pid / "autogroup").write_text(text)
    return tmp_path


def test_a_new_group_takes_the_parents_group_nice(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "/autogroup-7 nice 19\n", "/autogroup-9 nice 0\n")
    assert keep_parent_priority(41, proc) == 19
    assert (proc / "self" / "autogroup").read_text() == "19"


def test_nothing_is_raised_or_written_when_already_low_or_without_autogroups(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "/autogroup-7 nice 0\n", "/autogroup-9 nice 5\n")
    assert keep_parent_priority(41, proc) is None  # never raises a group's priority
    assert (proc / "self" / "autogroup").read_text() == "/autogroup-9 nice 5\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert keep_parent_priority(41, empty) is None and autogroup_nice("self", empty) is None
    (tmp_path / "41" / "autogroup").write_text("garbage")
    assert autogroup_nice(41, proc) is None


def test_a_real_child_in_a_new_session_keeps_the_nice_it_was_started_with() -> None:
    """Started under ``nice -n 7`` in a new session (what ProcessEngine and the training launcher
    do): with kernel autogroups its new group ends at nice 7, not the kernel's 0; without them the
    process nice (inherited) is what ranks it and the call changes nothing."""
    child = textwrap.dedent(
        """
        import os
        from workers.priority import autogroup_nice, keep_parent_priority
        before = autogroup_nice("self")
        keep_parent_priority()
        print(before, autogroup_nice("self"), os.getpriority(os.PRIO_PROCESS, 0))
        """
    )
    expected, done = _run_niced(7, child)
    before, after, own = done.stdout.split()
    assert own == str(expected)
    if Path("/proc/self/autogroup").exists():
        # the kernel's fresh group at 0, then the worker's priority (or its group's, if lower)
        assert before == "0" and after == str(max(expected, autogroup_nice(os.getpid()) or 0))
    else:
        assert before == after == "None"


def test_the_engine_host_runs_at_the_workers_priority(tiny_model_path: Path) -> None:
    """A worker under ``nice -n 3`` (its own session, as a service worker is) starts an engine host: the
    host's new session must not put it back at full weight."""
    script = textwrap.dedent(
        f"""
        from shared.config import ModelConfig
        from shared.runtime.versions import ModelVersion
        from workers.engines.process import ProcessEngine
        from workers.priority import autogroup_nice
        engine = ProcessEngine(
            ModelConfig(model={str(tiny_model_path)!r}, engine="hf"),
            ModelVersion("actor", "v0", {str(tiny_model_path)!r}),
        )
        try:
            print(autogroup_nice("self"), autogroup_nice(engine.child_pid))
        finally:
            engine.close()
        """
    )
    expected, done = _run_niced(3, script)
    worker_group, host_group = done.stdout.split()[-2:]
    if Path("/proc/self/autogroup").exists():
        assert worker_group == "0"  # the worker's own new session: the kernel's default
        assert host_group == str(expected)  # the host took the worker's nice, not its group's 0
    else:
        assert worker_group == host_group == "None"
