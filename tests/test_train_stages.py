"""The training stages' plumbing without a trainer: what stage 0 and the refiner's RFT hand the
trainer, and the version metadata they publish (one builder, the same keys as before)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from run_fixtures import new_run, shaped_model

from shared.config import SftConfig
from shared.records import StageSpec
from shared.runtime.artifacts import RunPaths, read_json
from shared.runtime.versions import METADATA, version_dir
from workers.stages import run_stage
from workers.stages import train as train_stage

VERSION_KEYS = set("role version parent objective data hyperparameters created_at metrics adapter".split())
"""The keys of every published version's metadata (a trained one may add how it was launched)."""
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


class NoEngines:
    def engine_for(self, role, version):  # noqa: ANN001, ANN201
        raise AssertionError("a training stage loads no engine")

    def release(self) -> None:
        pass


@pytest.fixture()
def trained(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every (trainer, settings) handed to ``train_version``; nothing is trained."""
    calls: list[tuple[str, Any]] = []

    def fake(
        trainer: str, train_fn: Any, start_from: Path, data_file: Path, records: list, settings: Any, *rest
    ):  # noqa: ANN401
        calls.append((trainer, settings))
        return {"loss_curve": [0.5], "train_seconds": 1.0}

    monkeypatch.setattr(train_stage, "train_version", fake)
    return calls


def make_run(tmp_path: Path, **extra: Any) -> RunPaths:
    model = shaped_model(tmp_path / "model")
    return new_run(tmp_path, "t", ["x"], model=str(model), runs=tmp_path / "runs", run_id="t", **extra)


def write_data(paths: RunPaths, name: str, text: str) -> None:
    """Iteration 0's data file ``name`` (pairs.jsonl, rft.jsonl), as the assemble stage leaves it."""
    file = paths.data_file(0, name)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


def spec(paths: RunPaths, stage: str) -> StageSpec:
    return StageSpec(run_dir=str(paths.root), iteration=0, stage=stage, shard=0)


def test_stage_zero_is_sft_of_both_roles(tmp_path: Path, trained: list) -> None:
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps(CHAT) + "\n" + json.dumps(CHAT) + "\n")
    paths = make_run(tmp_path, init={"actor_data": str(data), "refiner_data": str(data)})
    result = run_stage(paths, spec(paths, "init"), NoEngines())
    assert [t for t, _ in trained] == ["sft", "sft"]
    assert all(isinstance(s, SftConfig) for _, s in trained)
    assert result.counts == {"actor_records": 2, "refiner_records": 2}
    assert set(result.models) == {"actor_new", "refiner_new"}
    meta = read_json(version_dir(paths, "actor", 0) / METADATA)
    assert set(meta) == VERSION_KEYS
    assert (meta["version"], meta["objective"], meta["data"]["file"]) == ("v0", "sft", str(data))


def test_rft_is_sft_and_records_how_it_was_launched(tmp_path: Path, trained: list) -> None:
    paths = make_run(tmp_path)
    write_data(paths, "rft.jsonl", json.dumps(CHAT) + "\n")
    result = run_stage(paths, spec(paths, "train_refiner"), NoEngines())
    assert [t for t, _ in trained] == ["sft"]
    assert result.counts == {"records": 1, "trained": 1} and result.metrics["loss_curve"] == [0.5]
    meta = read_json(version_dir(paths, "refiner", 1) / METADATA)
    assert set(meta) == VERSION_KEYS | {"distributed", "num_processes"}
    assert (meta["objective"], meta["data"]["records"]) == ("rft", 1)
    assert run_stage(paths, spec(paths, "train_refiner"), NoEngines()).skipped


def test_no_pairs_publish_an_alias(tmp_path: Path, trained: list) -> None:
    paths = make_run(tmp_path)
    write_data(paths, "pairs.jsonl", "")
    result = run_stage(paths, spec(paths, "train_actor"), NoEngines())
    assert trained == [] and result.counts == {"records": 0, "trained": 0}
    meta = read_json(version_dir(paths, "actor", 1) / METADATA)
    assert (meta["alias_of"], meta["reason"], meta["objective"]) == (
        "v0",
        "no training records in pairs.jsonl",
        "dpo",
    )
    assert "distributed" not in meta and meta["adapter"] is False
