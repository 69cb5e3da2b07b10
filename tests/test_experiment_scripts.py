"""The experiment's shell scripts as an operator uses them: start.sh readies a fresh $EXP and runs a queue.

Issue #21's arms run for hours in the background from ``examples/experiment/`` (start.sh -> queue.sh ->
run-arm.sh -> ``spar run``). A machine that lost its runs is set up again by the same one command, and
a second start neither clones again nor starts a second queue. Here the queue holds a tiny arm (the
tiny model, two prompts, sample and judge) and a fork of it, so the whole chain runs for real in
seconds: clone, copies, a new run, a fork (queue.sh's ``--fork RUN_ID``), then resumes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from shared.runtime.artifacts import FORK_RECORD, RunPaths

REPO = Path(__file__).resolve().parent.parent
START = REPO / "examples" / "experiment" / "start.sh"
SAVE = REPO / "examples" / "experiment" / "save-state.sh"
QUEUE = REPO / "examples" / "experiment" / "queue.sh"
pytestmark = pytest.mark.timeout(900)


def _pids_of(text: str) -> list[int]:
    """The processes whose command line holds ``text`` (``ps``, as start.sh itself looks)."""
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    rows = (line.split(maxsplit=1) for line in listing.splitlines())
    return [int(row[0]) for row in rows if len(row) == 2 and text in row[1]]


@pytest.fixture()
def exp(tmp_path: Path) -> Iterator[Path]:
    """An empty $EXP; whatever the scripts started under it is ended afterwards."""
    root = tmp_path / "exp"
    yield root
    for where in (root, tmp_path / "exp2"):  # exp2: the replacing machine of the first test
        for pattern in (f"{where}/queue.sh", f"--runs-dir {where}/runs", f"--resume {where}/runs"):
            for pid in _pids_of(pattern):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _tiny_arm(tmp_path: Path, model: Path) -> Path:
    rows = (REPO / "examples" / "prompts" / "synth_train.jsonl").read_text().splitlines()[:2]
    (tmp_path / "prompts.jsonl").write_text("\n".join(rows) + "\n")
    tiny = {"model": str(model), "engine": "hf", "hf": {"batch_size": 8}}
    config = {
        "name": "tiny-arm",
        "prompts": str(tmp_path / "prompts.jsonl"),
        "iterations": 1,
        "stages": ["sample", "judge"],
        "actor": tiny,
        "refiner": tiny,
        "sample": {"num_responses": 2, "max_new_tokens": 8},
        "judge": {"backend": "verifier"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(
    exp: Path, *args: str, python: str = sys.executable, state: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # STATE: the packed runs start.sh unpacks; never the checkout's own (the real arms')
    env = os.environ | {"EXP": str(exp), "SPAR_PY": python, "STATE": str(state or exp / "no-state")}
    return subprocess.run(["bash", str(START), *args], capture_output=True, text=True, env=env, timeout=120)


def _wait_for(log: Path, text: str, count: int, timeout: float = 600.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = log.read_text() if log.exists() else ""
        if body.count(text) >= count or "queue stopped" in body:
            return body
        time.sleep(1)
    raise AssertionError(f"no {text!r} x{count} in {log} after {timeout} s:\n{log.read_text()}")


def test_start_readies_a_fresh_machine_runs_the_queue_and_a_second_start_resumes(
    tmp_path: Path, exp: Path, tiny_model_path: Path
) -> None:
    config = _tiny_arm(tmp_path, tiny_model_path)
    queue = tmp_path / "queue.txt"
    queue.write_text(f"# a comment line is skipped\ntiny {config}\ntiny-fork {config} --fork tiny\n")

    first = _start(exp, str(queue))
    assert first.returncode == 0, first.stderr
    assert "cloned" in first.stdout and "started" in first.stdout
    assert (exp / "code" / ".git").is_dir() and (exp / "code" / "shared").is_dir()
    assert all(os.access(exp / name, os.X_OK) for name in ("queue.sh", "run-arm.sh", "then-run.sh"))
    log = _wait_for(exp / "logs" / "queue.log", "queue done", 1)
    assert "queue stopped" not in log, log + (exp / "logs" / "tiny.log").read_text()[-3000:]
    assert "new tiny " in log and "new tiny-fork " in log and f"--fork {exp}/runs/tiny" in log
    for run in ("tiny", "tiny-fork"):
        assert RunPaths(exp / "runs" / run).manifest(0, "judge").exists(), run
    assert (exp / "runs" / "tiny-fork" / FORK_RECORD).exists()  # queue.sh turned the run id into its path

    # the same command again (a new session): no second clone, but the clone moved to this checkout's
    # commit (here from a commit of its own), and both arms resumed (already finished)
    git = ["git", "-C", str(exp / "code")]
    subprocess.run(
        [*git, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "old"],
        check=True,
    )
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout
    again = _start(exp, str(queue))
    assert again.returncode == 0, again.stderr
    assert "cloned" not in again.stdout and "started" in again.stdout
    assert "code clone" in again.stdout and "(this checkout's commit)" in again.stdout
    assert subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout == head
    log = _wait_for(exp / "logs" / "queue.log", "queue done", 2)
    assert "resume tiny\n" in log and "resume tiny-fork\n" in log and "queue stopped" not in log

    # the machine is replaced: save-state.sh packed the runs into the checkout, and start.sh on a new
    # $EXP lays them out again, so the queue resumes both arms instead of starting them over
    state = tmp_path / "state"
    env = os.environ | {"EXP": str(exp), "SPAR_PY": sys.executable, "STATE": str(state), "QUEUE": str(queue)}
    saved = subprocess.run(["bash", str(SAVE)], capture_output=True, text=True, env=env, timeout=300)
    assert saved.returncode == 0, saved.stderr
    assert sorted(p.name for p in state.glob("*.tar.gz")) == ["tiny-fork.tar.gz", "tiny.tar.gz"]
    # an arm reported and done leaves the queue (its line commented out): its archive goes, unless
    # a line not yet started forks it
    done = tmp_path / "queue-done.txt"
    done.write_text(f"# tiny {config}\ntiny-fork {config} --fork tiny\nlater {config} --fork tiny-fork\n")
    with_done = env | {"QUEUE": str(done)}
    again = subprocess.run(["bash", str(SAVE)], capture_output=True, text=True, env=with_done, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "not packed: tiny " in again.stdout and "removed" in again.stdout
    assert sorted(p.name for p in state.glob("*.tar.gz")) == ["tiny-fork.tar.gz"]
    # a fork still to create, held until a decision: its source travels all the same
    done.write_text(f"# tiny {config}\nHOLD until the recipe is picked\nlater {config} --fork tiny\n")
    kept = subprocess.run(["bash", str(SAVE)], capture_output=True, text=True, env=with_done, timeout=300)
    assert kept.returncode == 0, kept.stderr
    assert sorted(p.name for p in state.glob("*.tar.gz")) == ["tiny.tar.gz"]
    subprocess.run(["bash", str(SAVE)], capture_output=True, text=True, env=env, check=True, timeout=300)
    new_machine = tmp_path / "exp2"
    moved = _start(new_machine, str(queue), state=state)
    assert moved.returncode == 0, moved.stderr
    assert (moved.stdout + moved.stderr).count("unpacked into") == 2 and "cloned" in moved.stdout
    log = _wait_for(new_machine / "logs" / "queue.log", "queue done", 1)
    assert "resume tiny\n" in log and "resume tiny-fork\n" in log and "new tiny" not in log, log
    assert (new_machine / "runs" / "tiny" / "pack.json").is_file()  # laid out from the archive


def test_the_queue_skips_a_run_unpacked_finished_and_resumes_one_unpacked_unfinished(exp: Path) -> None:
    """A finished arm moved to a new machine has all its results: the queue does not retrain its
    versions (weights nothing reads); an unfinished one is resumed (here it fails: no config)."""
    (exp / "runs").mkdir(parents=True)
    (exp / "code").symlink_to(REPO)  # the queue imports the product from the code clone
    for run, finished in (("done-arm", True), ("open-arm", False)):
        root = exp / "runs" / run
        (root / "rebuild").mkdir(parents=True)
        (root / "pack.json").write_text(json.dumps({"run_id": run, "finished": finished, "versions": []}))
        (root / "rebuild" / "actor-v1.json").write_text(json.dumps({"weights_sha256": "0" * 64}))
    queue = exp / "queue.txt"
    queue.write_text("done-arm some.yaml\nopen-arm some.yaml\n")
    env = os.environ | {"EXP": str(exp), "SPAR_PY": sys.executable}
    subprocess.run(["bash", str(QUEUE), str(queue)], env=env, timeout=300, capture_output=True)
    log = (exp / "logs" / "queue.log").read_text()
    assert "skip done-arm: finished when packed" in log and "resume done-arm" not in log, log
    assert "resume open-arm" in log and "queue stopped at open-arm" in log, log

    # a HOLD line ends the queue there, without an error, until it is removed
    queue.write_text("done-arm some.yaml\nHOLD until the recipe is picked\nopen-arm some.yaml\n")
    held = subprocess.run(["bash", str(QUEUE), str(queue)], env=env, timeout=300, capture_output=True)
    log = (exp / "logs" / "queue.log").read_text().split("queue stopped at open-arm", 1)[1]
    assert held.returncode == 0 and "queue held: until the recipe is picked" in log, log
    assert "skip done-arm" in log and "open-arm" not in log and "queue done" not in log, log


def test_start_leaves_the_code_of_a_running_arm_alone(tmp_path: Path, exp: Path) -> None:
    (exp / "code").mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(exp / "code")], check=True)
    git = ["git", "-C", str(exp / "code")]
    subprocess.run(
        [*git, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "old"],
        check=True,
    )
    before = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    queue = tmp_path / "queue.txt"
    queue.write_text("# nothing to run\n")
    # a process whose command line is an arm's `spar run` on this $EXP's runs
    arm = [sys.executable, "-c", "import time; time.sleep(60)", "services.cli run --resume", f"{exp}/runs/a"]
    holder = subprocess.Popen(arm)
    try:
        started = _start(exp, str(queue))
    finally:
        holder.kill()
        holder.wait()
    assert started.returncode == 0, started.stderr
    assert "code clone left at" in started.stdout and "an arm runs from it" in started.stdout
    assert subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout == before


def test_start_refuses_a_second_queue_and_a_missing_python(tmp_path: Path, exp: Path) -> None:
    queue = tmp_path / "queue.txt"
    queue.write_text("# nothing to run\n")
    # a process whose command line names this $EXP's queue.sh stands for a queue still running
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"{exp}/queue.sh"])
    try:
        busy = _start(exp, str(queue))
    finally:
        holder.kill()
        holder.wait()
    assert busy.returncode == 0 and "running already" in busy.stdout and "started" not in busy.stdout
    assert not (exp / "logs" / "queue.log").exists() and not (exp / "code").exists()  # nothing touched

    missing = _start(exp, str(queue), python=str(tmp_path / "no-venv" / "python"))
    assert missing.returncode == 2 and "make install" in missing.stderr


def test_the_committed_queue_is_one_queue_sh_can_run_to_its_end() -> None:
    """Every line of examples/experiment/queue.txt would start: a valid run id (a '.' once stopped the
    queue hours before anyone looked), an existing config that loads with the line's `--set`s, and a
    `--fork` source that an earlier line makes (commented out once finished: its run stays)."""
    from services.runs import load_config_file
    from shared.names import RUN_NAME_HELP, RUN_NAME_PATTERN

    queue = REPO / "examples" / "experiment" / "queue.txt"
    lines = [line.split() for line in queue.read_text().splitlines() if line.strip()]
    # a finished arm's line is commented out (`# RUN_ID CONFIG ...`); its run stays for forks
    made = [w[1] for w in lines if w[0] == "#" and len(w) > 2 and w[2].endswith(".yaml")]
    runs = [words for words in lines if not words[0].startswith("#") and words[0] != "HOLD"]
    assert runs, "the queue runs nothing"
    for run, config, *rest in runs:
        assert re.match(RUN_NAME_PATTERN, run), f"{run}: a run id is {RUN_NAME_HELP}"
        assert run not in made, f"{run} appears twice"
        path = REPO / config
        assert path.is_file(), f"{run}: no config {config}"
        sets = [rest[k + 1] for k, word in enumerate(rest) if word == "--set"]
        forks = [rest[k + 1] for k, word in enumerate(rest) if word == "--fork"]
        load_config_file(path, sets)  # raises, naming the field, on a bad --set
        for source in forks:
            assert source in made, f"{run} forks {source}, which no earlier line makes"
        made.append(run)
