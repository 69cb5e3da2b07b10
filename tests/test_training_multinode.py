"""Training across nodes, tested on one machine: two launchers as two "nodes".

Each node is the train stage in a process of its own, as a multi-node job's pod runs it, with the
environment the gpu-multinode overlay gives a pod (``SPAR_NUM_MACHINES=2``, ``SPAR_MACHINE_RANK`` 0 or
1, node 0's address): its ``accelerate launch`` starts one process that joins the other node's over
gloo on loopback (torchrun's static rendezvous on node 0's port). Two nodes x batch 2 see exactly the
examples of one process with batch 4, so losses and weights agree within the tolerances of the
two-process tests (tests/test_training_launch.py). Node 0 alone publishes the version; killing a node
fails the job with the rank's error and the retry resumes from the step checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from test_training_launch import LOSS_TOLERANCE, STEPS, actor_run, state, train_stage

from shared.runtime.artifacts import RunPaths, read_json
from shared.runtime.versions import METADATA, version_dir
from workers.training.launch import Machines, accelerate_command, job_config

pytestmark = pytest.mark.timeout(900)
WEIGHT_TOLERANCE = 1e-4  # as tests/test_training_launch.py

# One node: the train stage (workers.stages.train.run_train_actor), as a train job's pod runs it.
NODE = """
import json, sys
import torch
from pathlib import Path
from shared.runtime.artifacts import RunPaths
from shared.runtime.shards import StageSpec
from workers.stages.common import StageContext
from workers.stages.train import run_train_actor

torch.set_num_threads(1)

class NoEngines:
    def release(self):
        pass

def progress(label, done, total):
    print(json.dumps({"done": done, "total": total}), flush=True)

spec = StageSpec(run_dir=sys.argv[1], iteration=0, stage="train_actor", shard=0)
result = run_train_actor(StageContext.open(RunPaths(Path(sys.argv[1])), spec, NoEngines(), progress))
print(json.dumps({"metrics": result.metrics, "counts": result.counts}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_nodes(paths: RunPaths, logs: Path, tag: str) -> list[subprocess.Popen]:
    """Both nodes of the job, each in its own process group (a node dies as a pod would)."""
    port = str(free_port())
    nodes = []
    for rank in (0, 1):
        env = os.environ | {
            "PYTHONUNBUFFERED": "1",
            "SPAR_NUM_MACHINES": "2",
            "SPAR_MACHINE_RANK": str(rank),
            "SPAR_MAIN_PROCESS_IP": "127.0.0.1",
            "SPAR_MAIN_PROCESS_PORT": port,
        }
        log = (logs / f"{tag}-node{rank}.log").open("w")
        nodes.append(
            subprocess.Popen(
                [sys.executable, "-c", NODE, str(paths.root)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )
    return nodes


def printed(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.models.tiny import tiny_model_cached

    return tiny_model_cached(tmp_path_factory.mktemp("multinode-models"), seed=0, imprint_steps=0)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> tuple[dict[str, Any], Path]:
    """The reference: one process, batch 4 (metrics, published folder)."""
    paths = actor_run(tmp_path_factory.mktemp("one"), model_path, "one", batch_size=4)
    metrics, _ = train_stage(paths)
    assert metrics["world_size"] == 1 and metrics["loss_curve"][-1] < metrics["loss_curve"][0] - 0.1
    return metrics, version_dir(paths, "actor", 1)


def test_the_nodes_come_from_the_pod_environment() -> None:
    assert Machines.from_env({}) is None and Machines.from_env({"SPAR_NUM_MACHINES": "1"}) is None
    env = {"SPAR_NUM_MACHINES": "4", "SPAR_MACHINE_RANK": "3", "SPAR_MAIN_PROCESS_IP": "train-0.spar"}
    machines = Machines.from_env(env)
    assert machines == Machines(4, 3, "train-0.spar", 29500)
    cfg = job_config("actor", {"config": {"num_processes": 8, "distributed": "fsdp"}})
    argv = accelerate_command("actor", Path("job.json"), 8, cfg, machines=machines)
    flags = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    assert flags["--num_processes"] == "8" and flags["--num_machines"] == "4"
    assert flags["--machine_rank"] == "3" and flags["--main_process_ip"] == "train-0.spar"
    assert flags["--main_process_port"] == "29500" and "--multi_gpu" in argv
    assert machines.processes_per_node(cfg) == 2
    from shared.errors import TrainingLaunchError

    with pytest.raises(TrainingLaunchError, match="num_processes=6 does not divide over SPAR_NUM_MACHINES=4"):
        machines.processes_per_node(job_config("actor", {"config": {"num_processes": 6}}))
    with pytest.raises(TrainingLaunchError, match="SPAR_MACHINE_RANK=4 is outside 0..3"):
        Machines.from_env(env | {"SPAR_MACHINE_RANK": "4"})
    with pytest.raises(TrainingLaunchError, match="needs SPAR_MAIN_PROCESS_IP"):
        Machines.from_env({"SPAR_NUM_MACHINES": "2", "SPAR_MACHINE_RANK": "0"})


@pytest.mark.parametrize("distributed", ["none", "fsdp", "deepspeed_zero3"])
def test_two_nodes_match_one_process_and_publish_once(
    tmp_path: Path, model_path: Path, one_process: tuple[dict[str, Any], Path], distributed: str
) -> None:
    single, single_folder = one_process
    paths = actor_run(
        tmp_path, model_path, "nodes", batch_size=2, num_processes=2, save_steps=2, distributed=distributed
    )
    nodes = start_nodes(paths, tmp_path, "run")
    for rank, node in enumerate(nodes):
        assert node.wait(timeout=600) == 0, (tmp_path / f"run-node{rank}.log").read_text()[-3000:]
    node0, node1 = (printed(tmp_path / f"run-node{rank}.log") for rank in (0, 1))
    double = node0[-1]["metrics"]
    diffs = [abs(a - b) for a, b in zip(single["loss_curve"], double["loss_curve"], strict=True)]
    assert double["world_size"] == 2 and double["distributed"] == distributed
    assert max(diffs) < LOSS_TOLERANCE
    # node 0 relays rank 0's steps; node 1 trained (no metrics of its own) and published nothing
    assert [line["done"] for line in node0 if "done" in line] == list(range(1, STEPS + 1))
    assert node1[-1]["metrics"] == {"machine_rank": 1, "num_machines": 2}
    assert node1[-1]["counts"]["trained"] == 0 and not any("done" in line for line in node1)
    target = version_dir(paths, "actor", 1)
    assert sorted(p.name for p in target.parent.iterdir()) == ["v1"]  # published once
    assert read_json(target / METADATA)["num_processes"] == 2
    ref, got = state(single_folder), state(target)
    weight_diff = max(float((ref[k] - got[k]).abs().max()) for k in ref)
    print(
        f"\n{distributed}: 2 nodes x 1 process vs 1 process x batch 4: max |loss diff| {max(diffs):.3g}, "
        f"max |weight diff| {weight_diff:.3g}"
    )
    assert weight_diff < WEIGHT_TOLERANCE


KILL_STEPS, KILL_SAVE = 40, 4


def test_a_killed_node_fails_the_job_with_the_ranks_error_and_the_retry_resumes(
    tmp_path: Path, model_path: Path
) -> None:
    from workers.stages.train import checkpoint_dir
    from workers.training.outcome import resume_point

    paths = actor_run(
        tmp_path,
        model_path,
        "killed",
        batch_size=2,
        num_processes=2,
        max_steps=KILL_STEPS,
        save_steps=KILL_SAVE,
        learning_rate=1e-4,
    )
    checkpoints = checkpoint_dir(paths, "actor", 1)
    node0, node1 = start_nodes(paths, tmp_path, "first")
    deadline = time.monotonic() + 300
    while resume_point(checkpoints) is None:
        assert node0.poll() is None, (tmp_path / "first-node0.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    os.killpg(node1.pid, signal.SIGKILL)  # node 1 is lost: its pod, launcher and rank, at once
    node1.wait()
    assert node0.wait(timeout=300) != 0, "node 0 went on without node 1"
    log0 = (tmp_path / "first-node0.log").read_text()
    assert "TrainingLaunchError" in log0 and "node 0 of 2) exited with code" in log0, log0[-3000:]
    errors = log0.split("errors:", 1)[1].split("last lines:", 1)[0] if "errors:" in log0 else ""
    assert errors.strip(), "the rank's own error is not in the message:\n" + log0[-3000:]
    assert not version_dir(paths, "actor", 1).exists()
    resumed_from = int(resume_point(checkpoints).name.split("-")[1])  # type: ignore[union-attr]
    assert KILL_SAVE <= resumed_from < KILL_STEPS

    retry = start_nodes(paths, tmp_path, "retry")
    for rank, node in enumerate(retry):
        assert node.wait(timeout=600) == 0, (tmp_path / f"retry-node{rank}.log").read_text()[-3000:]
    lines = printed(tmp_path / "retry-node0.log")
    steps = [line["done"] for line in lines if "done" in line]
    metrics = lines[-1]["metrics"]
    first_error = errors.strip().splitlines()[0]
    print(f"\nnode 1 killed; node 0 failed with: {first_error}; retry resumed from {resumed_from}")
    assert steps == list(range(resumed_from + 1, KILL_STEPS + 1))
    assert metrics["resumed_from_step"] == resumed_from
    assert metrics["loss_steps"] == list(range(1, KILL_STEPS + 1))
    assert sorted(p.name for p in version_dir(paths, "actor", 1).parent.iterdir()) == ["v1"]
    assert not checkpoints.exists()
    assert torch.isfinite(torch.tensor(metrics["loss_curve"])).all()
