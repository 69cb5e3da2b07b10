"""The whole shape: Redis, the API (uvicorn) and one worker per role as real processes; a run over REST."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from service_harness import PROMPTS, RedisServer, Stack, data_root, tiny_run_body


def run_body(**overrides) -> dict:
    return tiny_run_body("svc", seed=5, shard_size=2, train_steps=1, **overrides)


# The production engine: the actor and refiner workers serve the tiny model through vLLM (its CPU
# build here), each in its own engine process; a small KV cache keeps two of them affordable.
VLLM_ROLE = {"model": "models/tiny", "engine": "vllm", "vllm": {"kv_cache_gb": 0.25, "max_model_len": 512}}


@pytest.fixture()
def stack(tmp_path: Path, tiny_model_path: Path, redis_server: RedisServer):
    s = Stack(root=data_root(tmp_path, tiny_model_path, PROMPTS), redis_url=redis_server.url)
    yield s
    s.close()


def test_a_run_over_rest_end_to_end_on_the_vllm_engine(stack: Stack) -> None:
    stack.start_api()
    stack.start_workers()
    with stack.client() as c:
        created = c.post("/v1/runs", json=run_body(actor=VLLM_ROLE, refiner=VLLM_ROLE))
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        final = stack.wait_for(run_id)
        assert final["status"] == "succeeded", stack.tail_logs()
        assert final["models"] == {"actor": "v1", "refiner": "v1"}
        assert all(p["complete"] and p["done"] == p["total"] for p in final["progress"])
        metrics = final["iterations"][0]["metrics"]
        costs = {row["stage"]: row for row in final["iterations"][0]["stages"]}
        assert costs["sample"]["tokens_generated"] > 0 and costs["refine"]["engine_calls"] > 0
        pairs = c.get(f"/v1/runs/{run_id}/iterations/0/pairs")
        assert pairs.status_code == 200
        lines = [line for line in pairs.text.splitlines() if line.strip()]
        assert len(lines) == metrics["pairs"]
        workers = c.get("/v1/workers").json()
        assert {w["role"] for w in workers} == {"actor", "refiner", "train"}
        assert any("v0" in w["models"] or "v1" in w["models"] for w in workers if w["role"] != "train")
        listed = c.get("/v1/runs").json()
        assert [r["id"] for r in listed] == [run_id]
        text = c.get("/metrics").text
        assert "spar_queue_depth" in text and f'spar_pairs_produced_total{{run="{run_id}"}}' in text
    run_dir = Path(final["run_dir"])
    assert (run_dir / "models" / "actor" / "v1" / "spar_version.json").exists()
    assert (run_dir / "models" / "refiner" / "v1" / "spar_version.json").exists()


def test_bad_input_gets_clear_errors(stack: Stack) -> None:
    stack.start_api()
    (stack.root / "bad.jsonl").write_text('{"prompt": "ok"}\n{"nope": 1}\n')
    with stack.client() as c:
        r = c.post("/v1/runs", json=run_body(search={"branching": 0}))
        assert r.status_code == 422 and "branching" in r.text
        r = c.post("/v1/runs", json=run_body(serach={}))
        assert r.status_code == 422 and "serach" in r.text
        assert c.get("/v1/runs/nope").status_code == 404
        r = c.post("/v1/runs", json=run_body(prompts="/etc/passwd"))
        assert r.status_code == 400 and "outside the data root" in r.text
        r = c.post("/v1/runs", json=run_body(prompts="../outside.jsonl"))
        assert r.status_code == 400 and "outside the data root" in r.text
        r = c.post("/v1/runs", json=run_body(prompts="bad.jsonl"))
        assert r.status_code == 400 and "line 2" in r.text and r.json()["lines"] == [2]
        r = c.post("/v1/runs", content=b"x" * 2_000_000, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        # the spawned API applies the same rules as the in-process table (tests/test_api_hostile.py)
        r = c.post("/v1/runs", json=run_body(actor={"model": "/usr/lib"}))
        assert r.status_code == 400 and "actor.model" in r.text and "outside the data root" in r.text
        r = c.post(
            "/v1/runs", json=run_body(refiner={"model": "models/tiny", "hf": {"trust_remote_code": True}})
        )
        assert r.status_code == 400 and "SPAR_ALLOW_REMOTE_CODE" in r.text
        body = run_body()
        body["sample"]["temperature"] = "@"
        nan = json.dumps(body).replace('"@"', "NaN")
        r = c.post("/v1/runs", content=nan, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "sample.temperature" in r.text
        chunks = (b"x" * 100_000 for _ in range(30))  # no Content-Length: counted as received
        r = c.post("/v1/runs", content=chunks, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
    with stack.client(token=None) as anonymous:
        assert anonymous.get("/v1/runs").status_code == 401
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").json() == {"ok": True}
    with stack.client(token="wrong") as wrong:
        assert wrong.get("/v1/runs").status_code == 401
