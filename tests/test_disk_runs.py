"""Runs made by `spar run` inside the data root show in the service (read-only until resumed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_harness import RedisServer

from services.api.main import create_app
from services.api.settings import Settings
from services.runs import create_run, load_config_file
from shared.records import ShardOutput
from shared.runtime.shards import StageSpec, load_config, write_stage_manifest
from workers.stages.common import record_done

TOKEN = "disk-runs-token-0123456789abcdef0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _cli_run(root: Path, run_id: str, prompts: Path) -> Path:
    """A run as `spar run CONFIG --runs-dir $SPAR_DATA_ROOT/runs` leaves it, its sample stage done."""
    config_file = root / f"{run_id}.yaml"
    config_file.write_text(
        f"name: cli\nprompts: {prompts}\nshard_size: 2\nactor: {{model: tiny}}\nrefiner: {{model: tiny}}\n"
    )
    paths = create_run(load_config_file(config_file), root / "runs", run_id)
    config = load_config(paths)
    for shard in range(paths.num_prompt_shards()):
        spec = StageSpec(run_dir=str(paths.root), iteration=0, stage="sample", shard=shard)
        paths.shard(0, "sample", shard).parent.mkdir(parents=True, exist_ok=True)
        paths.shard(0, "sample", shard).write_text("")
        record_done(paths, spec, config, ShardOutput(counts={"prompts": 2, "responses": 6}), seconds=0.0)
    write_stage_manifest(paths, 0, "sample")
    return paths.root


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    root = tmp_path / "data"
    root.mkdir()
    (root / "p.jsonl").write_text("".join(json.dumps({"prompt": f"Say {i}."}) + "\n" for i in range(4)))
    settings = Settings(api_token=TOKEN, scheduler=False, redis_url=server.url, data_root=root)
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield client, root
    finally:
        server.stop()


def test_a_cli_run_in_the_data_root_is_listed_shown_and_read_only(api) -> None:
    client, root = api
    run_dir = _cli_run(root, "from-cli", root / "p.jsonl")
    listed = client.get("/v1/runs", headers=AUTH)
    assert listed.status_code == 200, listed.text
    item = next(r for r in listed.json() if r["id"] == "from-cli")
    assert item["source"] == "disk" and item["status"] == "incomplete"
    assert item["stage"] == "judge" and item["iteration"] == "0" and item["run_dir"] == str(run_dir)

    view = client.get("/v1/runs/from-cli", headers=AUTH)
    assert view.status_code == 200, view.text
    body = view.json()
    assert body["source"] == "disk" and body["status"] == "incomplete" and body["stage"] == "judge"
    sample = next(p for p in body["progress"] if p["stage"] == "sample")
    assert sample == {"iteration": 0, "stage": "sample", "done": 2, "total": 2, "complete": True}
    assert body["iterations"][0]["metrics"]["prompts"] == 4
    assert client.get("/v1/runs/from-cli/report?format=md", headers=AUTH).status_code == 200

    ask = {"run_id": "from-cli", "prompt": "p", "response": "r"}
    refine = client.post("/v1/refine", json=ask, headers=AUTH)
    assert refine.status_code == 409 and "resume" in refine.json()["detail"], refine.text
    cancel = client.post("/v1/runs/from-cli/cancel", headers=AUTH)
    assert cancel.status_code == 409 and "read-only" in cancel.json()["detail"]
    assert client.get("/v1/runs/no-such-run", headers=AUTH).status_code == 404

    resumed = client.post("/v1/runs/from-cli/resume", headers=AUTH)
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued", resumed.text
    item = next(r for r in client.get("/v1/runs", headers=AUTH).json() if r["id"] == "from-cli")
    assert item["source"] == "service" and item["status"] == "queued"
    assert [r["id"] for r in client.get("/v1/runs", headers=AUTH).json()].count("from-cli") == 1


def test_a_disk_run_with_paths_outside_the_data_root_cannot_join(api, tmp_path: Path) -> None:
    client, root = api
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text('{"prompt": "x"}\n')
    _cli_run(root, "outside", outside)
    assert client.get("/v1/runs/outside", headers=AUTH).json()["source"] == "disk"
    r = client.post("/v1/runs/outside/resume", headers=AUTH)
    assert r.status_code == 400 and "prompts:" in r.json()["detail"] and "data root" in r.json()["detail"]


def test_a_disk_run_whose_data_file_changed_cannot_join(api) -> None:
    """The held-out pairs it evaluates on were edited after `spar run` made it: 409 naming the
    field, before the scheduler takes it (shared/runtime/data_inputs.py)."""
    client, root = api
    pairs = root / "pairs.jsonl"
    pairs.write_text(json.dumps({"input": "Say hi.", "output_1": "hi", "output_2": "bye", "label": 1}) + "\n")
    run_dir = _cli_run(root, "edited", root / "p.jsonl")
    record = json.loads((run_dir / "config.json").read_text())
    record["config"]["evaluation"]["judge_data"] = str(pairs)  # as a config naming it leaves it
    record["inputs"] = {
        "evaluation.judge_data": {"path": str(pairs), "sha256": "0" * 64, "bytes": 1},
    }
    (run_dir / "config.json").write_text(json.dumps(record))
    r = client.post("/v1/runs/edited/resume", headers=AUTH)
    assert r.status_code == 409, r.text
    assert r.json()["detail"].startswith(f"evaluation.judge_data: {pairs} changed since the run was created")
    assert client.get("/v1/runs/edited", headers=AUTH).json()["source"] == "disk"  # not taken in


def test_a_disk_run_that_spar_run_is_working_on_cannot_join(api) -> None:
    """Two processes on one run would do every stage twice: 409 while its `spar run` is alive."""
    import os
    import socket

    from services.run_owner import OWNER_FILE

    client, root = api
    run_dir = _cli_run(root, "busy", root / "p.jsonl")
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": 0.0, "command": "spar run"}
    (run_dir / OWNER_FILE).write_text(json.dumps({**owner, "pid": os.getppid()}))
    r = client.post("/v1/runs/busy/resume", headers=AUTH)
    assert r.status_code == 409 and "being run by `spar run`" in r.json()["detail"], r.text
    (run_dir / OWNER_FILE).unlink()  # it stopped: the service may take the run
    assert client.post("/v1/runs/busy/resume", headers=AUTH).status_code == 200


def test_a_finished_disk_run_says_succeeded_and_hidden_folders_are_skipped(api) -> None:
    client, root = api
    run_dir = _cli_run(root, "done", root / "p.jsonl")
    config = load_config_file(root / "done.yaml")
    from shared.runtime.artifacts import RunPaths, write_json_atomic
    from shared.stages import pipeline

    paths = RunPaths(run_dir)
    for t, stage in pipeline(config.stages, config.iterations, with_init=False):
        if not paths.manifest(t, stage).exists():
            write_json_atomic(paths.manifest(t, stage), {"counts": {}, "engine": {}})
    (root / "runs" / ".creating-x-123").mkdir()
    runs = {r["id"]: r for r in client.get("/v1/runs", headers=AUTH).json()}
    assert runs["done"]["status"] == "succeeded" and runs["done"]["stage"] == ""
    assert not any(name.startswith(".") for name in runs)


def test_without_redis_the_list_is_a_clear_503_even_with_disk_runs(api) -> None:
    from service_harness import free_port

    client, root = api
    _cli_run(root, "while-down", root / "p.jsonl")
    settings = Settings(
        api_token=TOKEN, scheduler=False, redis_url=f"redis://127.0.0.1:{free_port()}/0", data_root=root
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as down:
        for path in ("/v1/runs", "/v1/runs/while-down"):
            r = down.get(path, headers=AUTH)
            assert r.status_code == 503 and "Redis" in r.json()["detail"], (path, r.text[:200])
            assert r.headers["retry-after"] == "5" and "Traceback" not in r.text
