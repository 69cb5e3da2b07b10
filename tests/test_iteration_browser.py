"""The iteration browser's API: pages of refinement trees and pairs, and the run report.

Over a real tiny run (sample, judge, refine and assemble on the tiny model, in-process) whose trees
the routes must give back exactly as the refine shards hold them, plus hand-written runs whose
layout we choose: several shards (one empty), every status, a prompt that spells out a status, a
damaged line. The API runs in-process (FastAPI's TestClient, as in test_api_security and
test_api_hostile) on a redis-server of our own, the scheduler off: nothing but the routes runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from service_harness import PROMPTS, RedisServer, data_root, tiny_run_body
from test_dashboard import finished_run

from services.api import Settings, create_app
from services.api.routes.iterations import tree_status
from services.dashboard import inline_hashes, report_csp
from services.runs import create_run, resolve_paths
from services.scheduler import Scheduler
from shared.config import RunConfig
from shared.records import NodeRow, PairRow, TreeRow
from shared.runtime.artifacts import RunPaths

TOKEN = "browser-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATUSES = ("success", "exhausted", "budget", "no_children")
TRICKY_PROMPT = 'Quote this: "status": "success", then {"status": "budget"}.'


@dataclass
class World:
    client: TestClient
    real: str  # the tiny run, refined and assembled
    made: str  # hand-written trees over three shards (one empty) and pairs
    bare: str  # created, nothing run
    root: Path

    def paths(self, run_id: str) -> RunPaths:
        return RunPaths(self.root / "runs" / run_id)


def node(id_: int, parent: int | None, depth: int, value: float) -> NodeRow:
    vote = {} if parent is None else {"pass": round(3 * value), "fail": 3 - round(3 * value), "invalid": 0}
    return NodeRow(
        id=id_,
        parent=parent,
        depth=depth,
        response=f"response {id_}\nline two",
        judgment=f"judgment of {id_}",
        value=value,
        raw=None if parent is None else f"raw reply {id_} [[start]]response {id_}[[end]]",
        vote=vote,
    )


def made_tree(n: int) -> TreeRow:
    """Tree ``n``: statuses in turn; a success is node 4 under node 2 (path 0 -> 2 -> 4), with
    nodes in generation order (node 3's sibling 4 is written before node 1's children)."""
    status = STATUSES[n % len(STATUSES)]
    nodes = [node(0, None, 0, 0.0), node(1, 0, 1, 0.0), node(2, 0, 1, 0.33)]
    if status != "no_children":
        nodes += [node(4, 2, 2, 1.0 if status == "success" else 0.33), node(3, 2, 2, 0.0), node(5, 1, 2, 0.0)]
    else:
        nodes = nodes[:1]
    return TreeRow(
        prompt_id=f"p{n}",
        key=f"p{n}#0",
        prompt=TRICKY_PROMPT if n == 1 else f"Prompt {n}: say something.",
        status=status,
        success_id=4 if status == "success" else None,
        expansions=len(nodes) - 1,
        parse_failures=n % 2,
        dropped_unparsed=0,
        dropped_ties=0,
        max_depth_reached=max(x.depth for x in nodes),
        nodes=nodes,
    )


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def new_run(root: Path, name: str, redis_url: str) -> RunPaths:
    config = RunConfig.model_validate(tiny_run_body(name, seed=1, shard_size=2))
    paths = create_run(resolve_paths(config, root), root / "runs")
    Scheduler(Redis.from_url(redis_url)).register(paths)
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("browser")
    server = RedisServer(tmp / "redis", appendonly=False).start()
    try:
        root = data_root(tmp, tiny_model_path, PROMPTS)
        real = finished_run(root, server.url)

        made = new_run(root, "made", server.url)
        trees = [made_tree(n).as_record() for n in range(9)]
        write_jsonl(made.shard(0, "refine", 0), trees[:4])
        write_jsonl(made.shard(0, "refine", 1), [])  # a shard whose prompts had no negatives
        write_jsonl(made.shard(0, "refine", 2), trees[4:])
        (made.stage_dir(0, "refine") / ".shard_00003.jsonl.x1.tmp").write_text("{half a tree")  # in flight
        pairs = [
            PairRow(
                prompt_id=f"p{k}",
                tree=f"p{k}#0",
                prompt=f"Prompt {k}",
                chosen=f"good {k}",
                rejected=f"bad {k}",
                rejected_judgment="No",
                chosen_value=1.0,
                depth=2,
            ).as_record()
            for k in range(45)
        ]
        write_jsonl(made.data_file(0, "pairs.jsonl"), pairs)
        good = made_tree(0).as_record()
        (made.shard(1, "refine", 0)).parent.mkdir(parents=True)
        made.shard(1, "refine", 0).write_text(json.dumps(good) + "\n" + '{"prompt_id": "cut off\n')

        bare = new_run(root, "bare", server.url)
        settings = Settings(api_token=TOKEN, scheduler=False, redis_url=server.url, data_root=root)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield World(client, real, made.run_id, bare.run_id, root)
    finally:
        server.stop()


def get(world: World, path: str, **params: object) -> dict:
    r = world.client.get(path, params=params, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def file_trees(paths: RunPaths, iteration: int = 0) -> list[TreeRow]:
    """Every tree of the iteration as the refine shards hold them, in shard order."""
    out = []
    for file in sorted(paths.stage_dir(iteration, "refine").glob("shard_*.jsonl")):
        out += [TreeRow.from_record(json.loads(line)) for line in file.read_text().splitlines() if line]
    return out


def walk_parents(tree: TreeRow) -> list[int]:
    """The success path, the slow and obvious way: from success_id up to the root."""
    if tree.success_id is None:
        return []
    by_id = {n.id: n for n in tree.nodes}
    path, at = [], by_id[tree.success_id]
    while True:
        path.append(at.id)
        if at.parent is None:
            return path[::-1]
        at = by_id[at.parent]


# --- trees -----------------------------------------------------------------------------------------


def test_the_real_runs_trees_are_the_refine_shards(world: World) -> None:
    expected = file_trees(world.paths(world.real))
    page = get(world, f"/v1/runs/{world.real}/iterations/0/trees", limit=200)
    assert page["total"] == len(expected) > 0 and page["offset"] == 0 and page["limit"] == 200
    assert [t["key"] for t in page["trees"]] == [t.key for t in expected]
    assert any(t.success_id is not None and len(walk_parents(t)) > 2 for t in expected)  # a deep success
    for got, tree in zip(page["trees"], expected, strict=True):
        assert got["status"] == tree.status and got["success_id"] == tree.success_id
        assert got["expansions"] == tree.expansions and got["prompt"] == tree.prompt
        path = walk_parents(tree)
        assert got["success_path"] == path
        assert [n["id"] for n in got["nodes"]] == [n.id for n in tree.nodes]
        for shown, n in zip(got["nodes"], tree.nodes, strict=True):
            assert shown["on_success_path"] == (n.id in path), (tree.key, n.id)
            for key in ("parent", "depth", "value", "vote", "judgment", "response", "raw"):
                assert shown[key] == getattr(n, key), (tree.key, n.id, key)


def test_trees_page_across_shards_in_file_order(world: World) -> None:
    url = f"/v1/runs/{world.made}/iterations/0/trees"
    expected = [made_tree(n).key for n in range(9)]
    seen, shards = [], []
    for offset in range(0, 12, 4):
        page = get(world, url, offset=offset, limit=4)
        assert page["total"] == 9 and page["offset"] == offset and page["limit"] == 4
        seen += [t["key"] for t in page["trees"]]
        shards += [t["shard"] for t in page["trees"]]
    assert seen == expected
    assert shards == [0, 0, 0, 0, 2, 2, 2, 2, 2]  # shard 1 is empty, the .tmp file is not a shard
    past = get(world, url, offset=50, limit=4)
    assert past["total"] == 9 and past["trees"] == []
    assert get(world, url)["limit"] == 20  # the default page


def test_the_status_filter(world: World) -> None:
    url = f"/v1/runs/{world.made}/iterations/0/trees"
    trees = [made_tree(n) for n in range(9)]
    for status in STATUSES:
        page = get(world, url, status=status, limit=2)
        want = [t.key for t in trees if t.status == status]
        assert page["total"] == len(want)
        assert [t["key"] for t in page["trees"]] == want[:2]
        assert all(t["status"] == status for t in page["trees"])
    # the prompt of p1 (exhausted) spells out "status": "success": it must not count as one
    assert "p1#0" not in [t["key"] for t in get(world, url, status="success", limit=200)["trees"]]
    real = file_trees(world.paths(world.real))
    for status in STATUSES:
        page = get(world, f"/v1/runs/{world.real}/iterations/0/trees", status=status, limit=200)
        assert [t["key"] for t in page["trees"]] == [t.key for t in real if t.status == status]


def test_success_path_of_a_hand_made_tree(world: World) -> None:
    tree = get(world, f"/v1/runs/{world.made}/iterations/0/trees", status="success", limit=1)["trees"][0]
    assert tree["success_id"] == 4 and tree["success_path"] == [0, 2, 4]
    marked = {n["id"]: n["on_success_path"] for n in tree["nodes"]}
    assert marked == {0: True, 1: False, 2: True, 4: True, 3: False, 5: False}
    root = tree["nodes"][0]
    assert root["parent"] is None and root["raw"] is None and root["vote"] == {}
    budget = get(world, f"/v1/runs/{world.made}/iterations/0/trees", status="budget", limit=1)["trees"][0]
    assert budget["success_path"] == [] and not any(n["on_success_path"] for n in budget["nodes"])


def test_no_trees_before_refine_is_a_404_that_says_so(world: World) -> None:
    r = world.client.get(f"/v1/runs/{world.bare}/iterations/0/trees", headers=AUTH)
    assert r.status_code == 404 and "no refinement trees yet (the refine stage" in r.json()["detail"]
    r = world.client.get(f"/v1/runs/{world.bare}/iterations/0/pairs/sample", headers=AUTH)
    assert r.status_code == 404 and "no pairs" in r.json()["detail"]
    r = world.client.get("/v1/runs/nope/iterations/0/trees", headers=AUTH)
    assert r.status_code == 404 and "no run" in r.json()["detail"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 10**12}, "offset"),
        ({"status": "won"}, "status"),
    ],
)
def test_bad_page_parameters_are_422(world: World, params: dict, field: str) -> None:
    for route in ("trees", "pairs/sample"):
        if field == "status" and route != "trees":
            continue
        r = world.client.get(f"/v1/runs/{world.made}/iterations/0/{route}", params=params, headers=AUTH)
        assert r.status_code == 422, (route, params, r.text)
        assert [e["field"] for e in r.json()["detail"]] == [field]


def test_a_damaged_line_is_a_409_naming_the_file_and_line(world: World) -> None:
    url = f"/v1/runs/{world.made}/iterations/1/trees"
    assert get(world, url, limit=1)["trees"][0]["key"] == "p0#0"  # the page stops before the damage
    r = world.client.get(url, headers=AUTH)
    assert r.status_code == 409, r.text
    assert "iter_1/refine/shard_00000.jsonl line 2" in r.json()["detail"]


def test_tree_status_reads_the_first_status_key() -> None:
    tricky = made_tree(1)
    line = json.dumps(tricky.as_record()).encode()
    assert b'\\"status\\": \\"success\\"' in line and tree_status(line) == "exhausted"
    compact = json.dumps(made_tree(0).as_record(), separators=(",", ":")).encode()
    assert tree_status(compact) == "success"
    odd = json.dumps({"status": "running", "nodes": []}).encode()  # not a tree status: parsed in full
    assert tree_status(odd) == "running"
    assert tree_status(b"not json") is None


# --- pairs -----------------------------------------------------------------------------------------


def test_pairs_sample_pages_are_the_ndjson_download(world: World) -> None:
    for run_id in (world.made, world.real):
        r = world.client.get(f"/v1/runs/{run_id}/iterations/0/pairs", headers=AUTH)
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.text.splitlines() if line]
        got, offset = [], 0
        while True:
            page = get(world, f"/v1/runs/{run_id}/iterations/0/pairs/sample", offset=offset, limit=20)
            assert page["total"] == len(lines)
            if not page["pairs"]:
                break
            got += page["pairs"]
            offset += 20
        assert got == lines
    assert len(lines) > 0  # the real run assembled pairs


# --- the report ------------------------------------------------------------------------------------


def test_the_report_is_served_with_its_own_csp(world: World) -> None:
    r = world.client.get(f"/v1/runs/{world.real}/report", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert csp == report_csp() and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert "connect-src" not in csp  # default-src 'none': the page can request nothing
    # its one script (the chart code) and its style are allowed by hash, and nothing else is
    hashes = inline_hashes(r.text)
    assert len(hashes["script"]) == 1 and csp.split("script-src ")[1].split(";")[0] == hashes["script"][0]
    assert csp.split("style-src ")[1].split(";")[0] == " ".join(hashes["style"])
    assert r.headers["x-content-type-options"] == "nosniff"
    assert world.real in r.text and 'id="report-charts"' in r.text and "<script src" not in r.text.lower()
    md = world.client.get(f"/v1/runs/{world.real}/report", params={"format": "md"}, headers=AUTH)
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert f"`{world.real}`" in md.text and md.text.startswith("# spar report")
    bad = world.client.get(f"/v1/runs/{world.real}/report", params={"format": "pdf"}, headers=AUTH)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "format"
    assert world.client.get("/v1/runs/nope/report", headers=AUTH).status_code == 404


# --- auth ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["report", "iterations/0/trees", "iterations/0/pairs/sample"])
@pytest.mark.parametrize("header", [None, "Bearer wrong-token-of-enough-length-0123456789"])
def test_every_new_route_wants_the_token(world: World, route: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = world.client.get(f"/v1/runs/{world.real}/{route}", headers=headers)
    assert r.status_code == 401 and "bearer token" in r.json()["detail"]
    assert "Bearer" in r.headers["www-authenticate"]


def test_the_routes_are_in_the_openapi_contract(world: World) -> None:
    spec = world.client.get("/openapi.json").json()
    trees = spec["paths"]["/v1/runs/{run_id}/iterations/{iteration}/trees"]["get"]
    params = {p["name"]: p for p in trees["parameters"]}
    assert params["limit"]["schema"]["maximum"] == 200 and params["limit"]["schema"]["minimum"] == 1
    assert "TreePage" in json.dumps(trees["responses"]["200"])
    assert "/v1/runs/{run_id}/iterations/{iteration}/pairs/sample" in spec["paths"]
    report = spec["paths"]["/v1/runs/{run_id}/report"]["get"]
    assert "text/html" in report["responses"]["200"]["content"]
