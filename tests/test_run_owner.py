"""One `spar run` process per run directory: a second is refused while the first works; a process
that died is taken over by the next `--resume`; `spar status` says which."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services import run_owner
from services.cli import main
from services.run_owner import OWNER_FILE, RunOwner, claim_run, owner_line, read_owner
from services.runs import create_run, load_config_file
from shared.errors import RunConflictError
from shared.runtime.artifacts import RunPaths, write_json_atomic


def _run(tmp_path: Path) -> RunPaths:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {i}."}) + "\n" for i in range(2)))
    config = tmp_path / "arm.yaml"
    config.write_text(f"name: arm\nprompts: {prompts}\nactor: {{model: tiny}}\nrefiner: {{model: tiny}}\n")
    return create_run(load_config_file(config), tmp_path / "runs", "arm")


@pytest.fixture()
def other_process():
    """A live process that is not this one (the owner a second `spar run` finds)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _owned_by(paths: RunPaths, pid: int, host: str | None = None, age: float = 0.0) -> None:
    owner = RunOwner(pid=pid, host=host or socket.gethostname(), started_at=time.time(), command="spar run x")
    write_json_atomic(paths.root / OWNER_FILE, owner.model_dump())
    then = time.time() - age
    os.utime(paths.root / OWNER_FILE, (then, then))


def test_a_second_run_of_a_run_being_worked_on_is_refused(tmp_path: Path, other_process: int, capsys) -> None:
    paths = _run(tmp_path)
    _owned_by(paths, other_process)
    with pytest.raises(RunConflictError) as caught:
        claim_run(paths)
    message = str(caught.value)
    assert f"being run by pid {other_process}" in message and f"kill {other_process}" in message
    # the CLI says so and does nothing
    assert main(["run", "--resume", str(paths.root), "--no-progress"]) == 2
    assert f"pid {other_process}" in " ".join("".join(capsys.readouterr()).split())
    assert not (paths.root / "iter_0").exists()
    assert owner_line(paths).startswith(f"running: pid {other_process}")


def test_a_dead_or_silent_owner_is_taken_over_and_released(tmp_path: Path, other_process: int) -> None:
    paths = _run(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _owned_by(paths, gone.pid)  # killed outright: its file stayed behind
    assert owner_line(paths).startswith("not running: its process")
    claim = claim_run(paths)
    assert read_owner(paths)[0].pid == os.getpid()
    claim.release()
    assert not (paths.root / OWNER_FILE).exists()
    # on another host only the heartbeat tells: fresh is alive, stale is gone
    _owned_by(paths, 1, host="elsewhere")
    with pytest.raises(RunConflictError, match="on elsewhere"):
        claim_run(paths)
    _owned_by(paths, other_process, age=run_owner.STALE_S + 10)  # alive pid, no heartbeat for long
    claim_run(paths).release()


def test_the_owner_keeps_its_file_fresh_while_it_works(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(run_owner, "HEARTBEAT_S", 0.05)
    paths = _run(tmp_path)
    claim = claim_run(paths)
    then = time.time() - 100
    os.utime(paths.root / OWNER_FILE, (then, then))
    time.sleep(0.5)
    assert read_owner(paths)[1] < 50  # touched again by the heartbeat
    claim.release()


def test_spar_run_releases_the_run_when_it_ends(tmp_path: Path, tiny_model_path: Path, monkeypatch) -> None:
    """A whole (tiny) run through the CLI: ownership taken while it works, gone after."""
    from test_iterations import write_config

    seen: list[str] = []
    import services.cli as cli

    real = cli._execute_run

    def spy(paths, args, console):
        seen.append(owner_line(paths))
        return real(paths, args, console)

    monkeypatch.setattr(cli, "_execute_run", spy)
    config = write_config(tmp_path, tiny_model_path, stages=["sample"])
    assert (
        main(["run", str(config), "--runs-dir", str(tmp_path / "r"), "--run-id", "own", "--no-progress"]) == 0
    )
    assert seen and seen[0].startswith(f"running: pid {os.getpid()}")
    assert not (tmp_path / "r" / "own" / OWNER_FILE).exists()
