"""A graph-order service run writes exactly what a serial-order run writes (issue 26).

One stack (Redis, the API, one worker per role) runs the same two-iteration config twice: in graph
order (the default; stages overlap on their pools) and in serial order (``SPAR_SCHEDULE_ORDER=serial``,
one stage at a time). Every data file (shard outputs, pairs, RFT mix, eval rows) and every published
weight tensor must be equal, and the graph run must really have overlapped stages (from the shard
records' start and end times) while the serial run never did.
"""

from __future__ import annotations

import json
from pathlib import Path

from service_harness import RedisServer, Stack
from test_service_faults import assert_same_weights, data_digest, drill_root

from shared.runtime.artifacts import RunPaths
from shared.runtime.versions import read_metadata, version_dir

ITERATIONS = 2


def body() -> dict:
    from service_harness import tiny_run_body

    out = tiny_run_body(
        "graph", seed=13, shard_size=12, responses=4, votes=3, new_tokens=(24, 64, 64), train_steps=6
    )
    return out | {
        "iterations": ITERATIONS,
        "stages": ["sample", "judge", "refine", "assemble", "train_actor", "train_refiner", "eval"],
        "evaluation": {"ifeval_limit": 8, "max_new_tokens": 24, "judge_data": "judge.jsonl"},
    }


def intervals(run_dir: Path) -> list[tuple[int, str, float, float]]:
    out = []
    for done in run_dir.glob("iter_*/*/shard_*.done.json"):
        record = json.loads(done.read_text())
        assert record["started_at"] is not None, done
        out.append(
            (
                record["spec"]["iteration"],
                record["spec"]["stage"],
                record["started_at"],
                record["finished_at"],
            )
        )
    return out


def overlapping(run_dir: Path) -> set[tuple[tuple[int, str], tuple[int, str]]]:
    """Pairs of different stages that had shards running at the same time."""
    found = set()
    items = intervals(run_dir)
    for k, (ta, sa, a0, a1) in enumerate(items):
        for tb, sb, b0, b1 in items[k + 1 :]:
            if (ta, sa) != (tb, sb) and a0 < b1 and b0 < a1:
                found.add(tuple(sorted([(ta, sa), (tb, sb)])))
    return found


def run(stack: Stack, order: str) -> Path:
    stack.env_extra["SPAR_SCHEDULE_ORDER"] = order
    stack.start_api()
    try:
        with stack.client() as c:
            created = c.post("/v1/runs", json=body())
            assert created.status_code == 201, created.text
            run_id = created.json()["id"]
            final = stack.wait_for(run_id, timeout=900)
            view = c.get(f"/v1/runs/{run_id}").json()
        assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
        assert view["running"] == [] and view["stage"] is None, "a finished run runs nothing"
        return Path(view["run_dir"])
    finally:
        stack.stop_api()


def test_graph_order_overlaps_stages_and_writes_the_serial_orders_bytes(
    tmp_path: Path, tiny_model_path: Path, redis_server: RedisServer
) -> None:
    root = drill_root(tmp_path, tiny_model_path, 24)
    stack = Stack(root=root, redis_url=redis_server.url)
    try:
        stack.start_workers()
        graph_dir = run(stack, "graph")
        serial_dir = run(stack, "serial")
    finally:
        stack.close()
    graph_digest, serial_digest = data_digest(graph_dir, root), data_digest(serial_dir, root)
    assert {f"iter_{t}/eval/shard_00000.jsonl" for t in range(ITERATIONS)} <= set(graph_digest)
    differ = sorted(
        k for k in graph_digest.keys() | serial_digest.keys() if graph_digest.get(k) != serial_digest.get(k)
    )
    assert not differ, f"graph order wrote other bytes than serial order: {differ}"
    for role in ("actor", "refiner"):
        for version in range(1, ITERATIONS + 1):
            ours, theirs = (
                version_dir(RunPaths(graph_dir), role, version),
                version_dir(RunPaths(serial_dir), role, version),
            )
            meta = read_metadata(ours)
            assert meta is not None and (meta.alias_of is None) == (read_metadata(theirs).alias_of is None)
            if meta.alias_of is None:
                assert_same_weights(ours, theirs)
    assert not overlapping(serial_dir), "serial order ran two stages at once"
    overlaps = overlapping(graph_dir)
    assert overlaps, "graph order never ran two stages at once"
    # only independent stages overlapped: never a stage with one it reads
    from shared.stages import dependencies

    stages = body()["stages"]
    for a, b in overlaps:
        assert a not in dependencies(b[1], b[0], stages, False) and b not in dependencies(
            a[1], a[0], stages, False
        )
