"""bench/gpu_check.py, the script prepared for the day a GPU is lent: it must work the first time.

Its CPU mode runs every step (the HF engine's sample/judge/refine, a DPO and an RFT step, the version
swap through a fresh engine host, vLLM's CPU build) on the tiny model, as a subprocess the way the GPU
machine runs it; the time caps are checked by running the steps with caps too short to finish.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_mode_runs_every_step_ok(tmp_path: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--cpu", "--model", str(tiny_model_path)]
    command += ["--out", str(out), "--work", str(tmp_path / "work"), "--budget", "480"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "cpu"
    statuses = {step["step"]: step["status"] for step in summary["steps"]}
    assert statuses == dict.fromkeys(_module().STEPS, "ok")
    data = {step["step"]: step["data"] for step in summary["steps"]}

    assert data["env"]["device"]["cuda_available"] is False
    inference = data["inference"]
    assert inference["load"]["device"] == "cpu" and inference["dtype"] == "torch.float32"
    for phase in ("sample", "judge", "refine"):
        assert inference[phase]["completions"] > inference[phase]["empty"], phase
        assert inference[phase]["generated_tokens"] > 0, phase
    assert inference["trees"]["roots"] > 0
    for step, role in (("train_dpo", "actor"), ("train_rft", "refiner")):
        metrics = data[step][role]
        assert metrics["steps"] == 2 and len(metrics["loss_curve"]) == 2
        assert metrics["peak_gpu_allocated_mib"] == "cpu mode" and metrics["dtype"] == "float32"
    swap = data["swap"]
    assert swap["v1"] == str(tmp_path / "work" / "train" / "actor")  # the DPO output, not v0 again
    assert swap["before"]["device_used_mib"] == "cpu mode"
    # v1 lives in its own process while loaded, and that process is gone after close
    assert swap["v1_fresh_process_loaded"]["child_processes"] == 1
    assert swap["v1_closed"]["child_processes"] == 0
    assert data["vllm"]["generate"]["empty"] < 4

    markdown = (out / "summary.md").read_text()
    assert all(f"| {step} | ok |" in markdown for step in statuses)
    assert all((out / "logs" / f"{step}.log").is_file() for step in statuses)


def test_a_step_past_its_cap_is_killed_and_the_rest_still_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_check = _module()
    monkeypatch.setattr(gpu_check, "CAPS", {"cpu": dict.fromkeys(gpu_check.STEPS, 1)})
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 1)
    out = tmp_path / "out"
    code = gpu_check.main(["--cpu", "--out", str(out), "--work", str(tmp_path / "work"), "--budget", "60"])
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    # importing torch alone takes longer than a second: both steps hit their caps and are ended at
    # once; without a model folder the steps that load one are not started
    statuses = [(s["step"], s["status"]) for s in summary["steps"]]
    assert statuses == [("env", "timeout"), ("model", "timeout")] + [
        (step, "not_run") for step in gpu_check.STEPS[2:]
    ]
    assert all(s["seconds"] < 10 for s in summary["steps"][:2])
    assert "the model step did not finish" in (out / "summary.md").read_text()


def test_a_spent_budget_leaves_the_remaining_steps_not_run(tmp_path: Path) -> None:
    gpu_check = _module()
    out = tmp_path / "out"
    assert (
        gpu_check.main(["--cpu", "--out", str(out), "--work", str(tmp_path / "work"), "--budget", "0"]) == 1
    )
    summary = json.loads((out / "summary.json").read_text())
    assert {s["status"] for s in summary["steps"]} == {"not_run"}
    assert "budget spent" in (out / "summary.md").read_text()


def test_gpu_mode_without_a_gpu_stops_after_env(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--work", str(tmp_path / "work")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert steps[0]["status"] == "failed" and "no CUDA device" in steps[0]["reason"]
    # nothing ran on the CPU to be reported as GPU numbers
    assert {s["status"] for s in steps[1:]} == {"not_run"}
