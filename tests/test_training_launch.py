"""Training launched as on a cluster: ``accelerate launch`` in a child process, and resume after a kill.

On these CPU machines two processes run DDP over gloo through the same command a GPU node uses. Same
data, same seed: two ranks with per-device batch 2 see exactly the examples that one process with batch
4 sees at each step (accelerate shards each global batch across ranks in sampler order) and DDP averages
the two halves' gradients, so the loss curves agree up to float32 summation order (measured: ~2e-7).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from service_harness import variant_prompts

from services.runs import create_run
from shared.config import RunConfig
from shared.runtime.artifacts import RunPaths, read_json
from shared.runtime.shards import StageSpec
from shared.runtime.versions import METADATA, version_dir
from workers.stages.common import StageContext
from workers.stages.train import checkpoint_dir, run_train_actor

pytestmark = pytest.mark.timeout(600)

PAIRS = [
    {
        "prompt": f"Write a short poem about {topic} in {n} sentences.",
        "chosen": " ".join(["The sea was calm and blue."] * n),
        "rejected": "the river light, quiet stone, " * (n + 1),
    }
    for n, topic in enumerate(
        ["the sea", "rain", "a garden", "the moon", "coffee", "winter", "bees", "music"], 1
    )
]
STEPS = 4
# Float32 reductions in another order (gloo all-reduce of two half-batch gradients vs one batch) drift by
# ~1e-7 per step; a wrong data split or an unaveraged gradient moves step 2's loss by > 1e-2.
LOSS_TOLERANCE = 1e-4


class NoEngines:
    """The train stage only asks its engine provider to release inference memory."""

    def release(self) -> None:
        pass


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.models.tiny import tiny_model_cached

    return tiny_model_cached(tmp_path_factory.mktemp("launch-models"), seed=0, imprint_steps=0)


def actor_run(root: Path, model: Path, name: str, **train: Any) -> RunPaths:
    """A run whose iteration 0 has assembled ``PAIRS``: ready for its train_actor stage."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in variant_prompts(2)))
    settings = {
        "objective": "dpo",
        "max_steps": STEPS,
        "grad_accum": 1,
        "max_length": 256,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.0,
        "sft_weight": 0.0,
        # processes are compared with one process to 1e-4: float32, where batch composition cannot
        # change the rounding (bf16 autocast would, by about 1e-3)
        "bf16": False,
    } | train
    config = RunConfig.model_validate(
        {
            "name": name,
            "seed": 3,
            "prompts": str(root / "prompts.jsonl"),
            "actor": {"model": str(model)},
            "refiner": {"model": str(model)},
            "train_actor": settings,
        }
    )
    paths = create_run(config, root / "runs", name)
    data = paths.data_file(0, "pairs.jsonl")
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return paths


def train_stage(paths: RunPaths) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    steps: list[tuple[int, int]] = []
    spec = StageSpec(run_dir=str(paths.root), iteration=0, stage="train_actor", shard=0)
    ctx = StageContext.open(paths, spec, NoEngines(), lambda label, done, total: steps.append((done, total)))
    result = run_train_actor(ctx)
    return result.metrics, steps


def state(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> tuple[dict[str, Any], Path]:
    """The reference: the train stage in this process, batch 4 (metrics, published folder)."""
    paths = actor_run(tmp_path_factory.mktemp("one"), model_path, "one", batch_size=4)
    metrics, _ = train_stage(paths)
    assert metrics["world_size"] == 1
    assert (
        metrics["loss_curve"][-1] < metrics["loss_curve"][0] - 0.1
    )  # it trained: comparisons mean something
    return metrics, version_dir(paths, "actor", 1)


@pytest.mark.parametrize("distributed", ["none", "deepspeed_zero3", "fsdp"])
def test_two_processes_match_one_process_and_publish_once(
    tmp_path: Path, model_path: Path, one_process: tuple[dict[str, Any], Path], distributed: str
) -> None:
    """DDP (gloo), DeepSpeed ZeRO-3 (its CPU accelerator) and FSDP2 (gloo) on 2 ranks x batch 2."""
    single, single_folder = one_process
    two = actor_run(
        tmp_path, model_path, "two", batch_size=2, num_processes=2, save_steps=2, distributed=distributed
    )
    double, steps = train_stage(two)

    diffs = [abs(a - b) for a, b in zip(single["loss_curve"], double["loss_curve"], strict=True)]
    print(
        f"\n{distributed}: 1 process {single['loss_curve']}\n2 processes {double['loss_curve']}"
        f"\nmax |loss diff| {max(diffs):.3g}"
    )
    assert double["world_size"] == 2 and double["distributed"] == distributed
    assert max(diffs) < LOSS_TOLERANCE
    assert steps == [(k, STEPS) for k in range(1, STEPS + 1)]  # rank 0's progress reached the caller

    target = version_dir(two, "actor", 1)
    meta = read_json(target / METADATA)
    assert meta["num_processes"] == 2 and meta["metrics"]["loss_steps"] == list(range(1, STEPS + 1))
    siblings = sorted(p.name for p in target.parent.iterdir())
    assert siblings == ["v1"], siblings  # published once, no staging folder left behind
    assert not checkpoint_dir(two, "actor", 1).exists()  # step checkpoints removed after publishing
    # Rank 0 saved whole weights (gathered from the shards under ZeRO-3/FSDP), equal to one process's.
    ref, got = state(single_folder), state(target)
    assert got.keys() == ref.keys()
    weight_diff = max(float((ref[k] - got[k]).abs().max()) for k in ref)
    print(f"max |weight diff| vs 1 process {weight_diff:.3g}")
    assert weight_diff < 1e-4


def test_a_failing_launched_job_fails_the_stage_with_the_childs_error(
    tmp_path: Path, model_path: Path
) -> None:
    from workers.training.launch import TrainingLaunchError

    # Every prompt is longer than 16 tokens: each rank drops all examples and raises.
    paths = actor_run(tmp_path, model_path, "bad", max_length=16, num_processes=2)
    with pytest.raises(TrainingLaunchError) as failure:
        train_stage(paths)
    message = str(failure.value)
    assert "exited with code" in message and "no example left after truncation" in message, message
    assert not version_dir(paths, "actor", 1).exists()


# The train stage in a process of its own, as a train worker runs it. ``pace`` seconds of sleep after each
# step keep the tiny model's training slow enough to be killed between two checkpoints.
RUNNER = """
import json, sys, time
import torch
from pathlib import Path
from shared.runtime.artifacts import RunPaths
from shared.runtime.shards import StageSpec
from workers.stages.common import StageContext
from workers.stages.train import run_train_actor

torch.set_num_threads(1)
root, pace = Path(sys.argv[1]), float(sys.argv[2])

class NoEngines:
    def release(self):
        pass

def progress(label, done, total):
    print(json.dumps({"done": done, "total": total}), flush=True)
    time.sleep(pace)

spec = StageSpec(run_dir=str(root), iteration=0, stage="train_actor", shard=0)
result = run_train_actor(StageContext.open(RunPaths(root), spec, NoEngines(), progress))
print(json.dumps({"metrics": result.metrics}), flush=True)
"""
RESUME_STEPS, SAVE_STEPS = 12, 4


def start_runner(paths: RunPaths, pace: float, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(paths.root), str(pace)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )


def printed(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("processes", [1, 2])
def test_training_killed_mid_way_resumes_from_its_last_checkpoint(
    tmp_path: Path, model_path: Path, processes: int
) -> None:
    from transformers import AutoModelForCausalLM

    from workers.training.outcome import resume_point

    paths = actor_run(
        tmp_path,
        model_path,
        "resume",
        batch_size=2,
        max_steps=RESUME_STEPS,
        save_steps=SAVE_STEPS,
        num_processes=processes,
        learning_rate=1e-4,
    )
    checkpoints = checkpoint_dir(paths, "actor", 1)
    first = start_runner(paths, pace=1.0, log=tmp_path / "killed.log")
    deadline = time.monotonic() + 240
    while resume_point(checkpoints) is None:
        assert first.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)  # the worker dies without any clean-up
    first.wait()
    killed_at = printed(tmp_path / "killed.log")[-1]["done"]
    assert killed_at < RESUME_STEPS, "training finished before the kill"
    assert not version_dir(paths, "actor", 1).exists()
    if processes > 1:  # the launched ranks die with the worker (parent-death signal), not orphaned
        deadline, job = time.monotonic() + 60, str(checkpoints / "job.json")
        while job in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, "launched ranks outlived the killed worker"
            time.sleep(0.5)
    resumed_from = int(resume_point(checkpoints).name.split("-")[1])  # type: ignore[union-attr]

    retry = start_runner(paths, pace=0.0, log=tmp_path / "retry.log")
    assert retry.wait(timeout=400) == 0, (tmp_path / "retry.log").read_text()[-3000:]
    lines = printed(tmp_path / "retry.log")
    retry_steps = [line["done"] for line in lines if "done" in line]
    metrics = lines[-1]["metrics"]
    print(
        f"killed after step {killed_at}; retry resumed from checkpoint step {resumed_from}; "
        f"retry logged steps {retry_steps}; curve steps {metrics['loss_steps']}"
    )
    # Killed mid-way: the last complete checkpoint is before the end (the launched ranks run unpaced, so
    # the step count the killed worker relayed may lag behind theirs).
    assert SAVE_STEPS <= resumed_from < RESUME_STEPS and resumed_from % SAVE_STEPS == 0
    assert retry_steps[0] == resumed_from + 1 > 1  # the retry did not start at step 0
    assert retry_steps == list(range(resumed_from + 1, RESUME_STEPS + 1))
    assert metrics["resumed_from_step"] == resumed_from
    assert metrics["loss_steps"] == list(range(1, RESUME_STEPS + 1))  # one continuous curve
    assert len(metrics["loss_curve"]) == RESUME_STEPS
    assert AutoModelForCausalLM.from_pretrained(version_dir(paths, "actor", 1)) is not None
    assert not checkpoints.exists()
