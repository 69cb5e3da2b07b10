"""A job that needs more GPUs than its worker sees is refused in one line naming the setting; the HF
engine takes the GPU when there is one (``device: auto``) and says which device it chose.

The GPU count is passed in (these machines have none); everything else is the code a worker runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shared.config import RunConfig
from shared.errors import GPUCountError
from workers.gpus import check_gpu_counts, gpu_needs, num_machines


def config(**overrides: object) -> RunConfig:
    data = {"prompts": "p.jsonl", "actor": {"model": "tiny"}, "refiner": {"model": "tiny"}}
    return RunConfig.model_validate(data | overrides)


def vllm(**settings: object) -> dict:
    return {"model": "tiny", "engine": "vllm", "vllm": settings}


def refusal(cfg: RunConfig, stage: str, visible: int) -> str:
    with pytest.raises(GPUCountError) as refused:
        check_gpu_counts(cfg, stage, visible=visible)
    message = str(refused.value)
    assert "\n" not in message  # one line
    return message


def test_tensor_parallel_beyond_the_visible_gpus_is_refused_naming_the_setting() -> None:
    cfg = config(actor=vllm(tensor_parallel_size=4))
    message = refusal(cfg, "sample", visible=2)
    assert message.startswith("actor.vllm.tensor_parallel_size=4 needs 4 GPU(s) on this worker but it sees 2")
    assert "lower actor.vllm.tensor_parallel_size" in message
    check_gpu_counts(cfg, "sample", visible=4)  # enough GPUs: accepted
    check_gpu_counts(cfg, "judge", visible=2)  # the judge stage runs the refiner only
    assert "actor.vllm" in refusal(cfg, "eval", visible=2)  # eval runs both roles


def test_cpu_workers_check_only_what_would_use_a_gpu() -> None:
    # device auto on a CPU worker: vLLM's CPU build, tensor parallelism unused
    check_gpu_counts(config(refiner=vllm(tensor_parallel_size=8)), "judge", visible=0)
    # asked for cuda explicitly: a worker without GPUs cannot serve it
    assert "refiner.vllm.tensor_parallel_size=1" in refusal(config(refiner=vllm(device="cuda")), "judge", 0)
    assert "refiner.hf.device=cuda:1 needs 2 GPU(s)" in refusal(
        config(refiner={"model": "tiny", "hf": {"device": "cuda:1"}}), "refine", visible=1
    )
    check_gpu_counts(config(), "sample", visible=0)  # the defaults run anywhere (hf, device auto)


def test_training_processes_beyond_the_visible_gpus_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(train_actor={"num_processes": 8}, train_refiner={"num_processes": 2})
    message = refusal(cfg, "train_actor", visible=4)
    assert message.startswith("train_actor.num_processes=8 needs 8 GPU(s) on this worker but it sees 4")
    check_gpu_counts(cfg, "train_refiner", visible=4)
    check_gpu_counts(cfg, "train_actor", visible=0)  # CPU: the processes run over gloo, as in the tests
    # multi-node: num_processes counts every node's processes
    monkeypatch.setenv("SPAR_NUM_MACHINES", "2")
    check_gpu_counts(cfg, "train_actor", visible=4)
    assert "over 2 nodes needs 4 GPU(s)" in refusal(cfg, "train_actor", visible=2)
    assert gpu_needs(cfg, "train_actor", 8, machines=4) == [
        ("train_actor.num_processes", 2, "8 over 4 nodes")
    ]
    monkeypatch.setenv("SPAR_NUM_MACHINES", "zero")
    with pytest.raises(GPUCountError, match="SPAR_NUM_MACHINES='zero'"):
        num_machines()


def test_stage_zero_checks_both_of_its_trainings() -> None:
    cfg = config(init={"actor_data": "a.jsonl", "refiner": {"num_processes": 3}})
    assert refusal(cfg, "init", visible=2).startswith("init.refiner.num_processes=3")


def test_the_worker_refuses_before_loading_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.runs import create_run
    from workers import gpus, jobs

    monkeypatch.setenv("SPAR_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SPAR_DATA_ROOT", str(tmp_path))  # the worker re-checks the config's paths
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    cfg = config(prompts=str(tmp_path / "p.jsonl"), actor=vllm(device="cuda", tensor_parallel_size=2))
    paths = create_run(cfg, tmp_path / "runs", "gpus")
    monkeypatch.setattr(gpus, "visible_gpus", lambda: 1)
    monkeypatch.setattr(jobs.ENGINES, "engine_for", lambda *a: pytest.fail("an engine was loaded"))
    spec = {"run_dir": str(paths.root), "iteration": 0, "stage": "sample", "shard": 0}
    with pytest.raises(GPUCountError, match=r"^actor\.vllm\.tensor_parallel_size=2 needs 2 GPU"):
        jobs.run_shard(spec)


def test_hf_device_defaults_to_auto_and_keeps_cpu_runs_as_they_were(
    tiny_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from workers.engines.hf import HFEngine

    cfg = config()
    assert cfg.actor.hf.device == "auto" and cfg.actor.hf.dtype == "float32"
    # the device is execution-only: the stage hashes are those of runs made when the default was cpu
    for device in ("cpu", "cuda"):
        pinned = config(actor={"model": "tiny", "hf": {"device": device}})
        assert pinned.stage_hash("sample") == cfg.stage_hash("sample")
    assert config(actor={"model": "tiny", "hf": {"dtype": "bfloat16"}}).stage_hash(
        "sample"
    ) != cfg.stage_hash("sample")
    with caplog.at_level(logging.INFO, logger="spar.engines"):
        engine = HFEngine(tiny_model_path, cfg.actor.hf)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert engine.device.type == expected
    if expected == "cpu":
        assert engine.model.dtype == torch.float32
    chosen = [r for r in caplog.records if getattr(r, "event", "") == "engine.device"]
    assert chosen and chosen[0].device.startswith(expected) and chosen[0].requested == "auto"
    assert f"on {expected}" in chosen[0].getMessage()
