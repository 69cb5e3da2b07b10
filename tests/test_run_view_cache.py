"""`GET /v1/runs/{id}` is answered from one view cache (services/api/views.py, ``RunViewCache``):
the run's files are read only when they changed, the body is rebuilt only when the state or the
files changed, and one least-recently-used bound covers everything it keeps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from test_iterations import write_config

from services.api import views
from services.api.views import RunViewCache
from services.runs import create_run, load_config_file
from shared.records import ShardOutput
from shared.runtime.shards import StageSpec, load_config, write_stage_manifest
from workers.stages.common import record_done


def state_of(paths, **fields: str) -> dict[str, str]:
    """A scheduler state of the run at ``paths``, as Redis holds it."""
    return {"status": "running", "stage": "sample", "updated_at": "1", "run_dir": str(paths.root)} | fields


@pytest.fixture()
def run(tmp_path: Path, tiny_model_path: Path):
    paths = create_run(load_config_file(write_config(tmp_path, tiny_model_path)), tmp_path / "runs", "cached")
    return paths, RunViewCache(state_ttl=60)


def view(cache: RunViewCache, state: dict[str, str], run_id: str = "cached") -> dict:
    """What the route answers (through the cache), parsed."""
    return json.loads(asyncio.run(cache.body(run_id, state)))


def finish_shard(paths, stage: str, shard: int) -> None:
    spec = StageSpec(run_dir=str(paths.root), iteration=0, stage=stage, shard=shard)
    paths.shard(0, stage, shard).parent.mkdir(parents=True, exist_ok=True)
    paths.shard(0, stage, shard).write_text("")
    record_done(
        paths, spec, load_config(paths), ShardOutput(counts={"prompts": 2, "responses": 8}), seconds=0.0
    )


def sample_progress(body: dict) -> dict:
    return next(p for p in body["progress"] if p["stage"] == "sample")


def test_an_unchanged_run_is_served_without_reading_its_files(run) -> None:
    paths, cache = run
    first = view(cache, state_of(paths))
    second = view(cache, state_of(paths))
    assert second == first and cache.disk_reads == 1 and cache.renders == 1
    # the scheduler's state is live: a new status shows at once, still without reading the files
    third = view(cache, state_of(paths, status="cancelled", updated_at="2"))
    assert third["status"] == "cancelled" and third["updated_at"] == 2.0
    assert cache.disk_reads == 1 and cache.renders == 2


def test_every_finished_shard_and_stage_shows_in_the_next_view(run) -> None:
    paths, cache = run
    shards = paths.num_prompt_shards()
    assert shards > 1
    assert sample_progress(view(cache, state_of(paths)))["done"] == 0
    for k in range(shards):
        finish_shard(paths, "sample", k)
        done = sample_progress(view(cache, state_of(paths)))
        assert done["done"] == k + 1 and not done["complete"]
    assert cache.disk_reads == shards + 1
    write_stage_manifest(paths, 0, "sample")
    body = view(cache, state_of(paths))
    assert sample_progress(body)["complete"] and body["iterations"][0]["metrics"]["prompts"] == 2 * shards


def test_a_run_without_a_change_journal_is_always_read_afresh(run) -> None:
    paths, cache = run
    paths.changes.unlink()  # a run made by an older spar
    view(cache, state_of(paths))
    view(cache, state_of(paths))
    assert cache.disk_reads == 2 and "cached" not in cache


def test_one_bound_least_recently_used_out_and_a_changed_run_is_rebuilt(tmp_path: Path, run) -> None:
    """The one eviction policy: past ``capacity`` runs the least recently USED goes (a hit counts),
    an evicted run is read again when asked for, and a run whose files changed is rebuilt, never
    served from what was kept."""
    paths, _ = run
    config = load_config(paths)  # the fixture's config, for three more runs
    runs = {name: create_run(config, tmp_path / "runs", name) for name in ("a", "b", "c")}
    cache = RunViewCache(state_ttl=60, capacity=2)
    for name in ("a", "b"):
        view(cache, state_of(runs[name]), name)
    assert len(cache) == 2 and cache.disk_reads == 2
    assert cache.cached_body("a", state_of(runs["a"])) is not None  # a hit: "a" is now the most recent
    view(cache, state_of(runs["c"]), "c")  # past the bound: "b" (least recently used) goes, not "a"
    assert len(cache) == 2 and "b" not in cache and "a" in cache and "c" in cache
    assert cache.cached_body("b", state_of(runs["b"])) is None
    view(cache, state_of(runs["b"]), "b")  # evicted: read again, and "a" goes now
    assert cache.disk_reads == 4 and "a" not in cache and len(cache) == 2
    # a kept run whose files change: not served stale, rebuilt from its files
    before = cache.cached_body("c", state_of(runs["c"]))
    assert before is not None and sample_progress(json.loads(before))["done"] == 0
    finish_shard(runs["c"], "sample", 0)
    assert cache.cached_body("c", state_of(runs["c"])) is None
    assert sample_progress(view(cache, state_of(runs["c"]), "c"))["done"] == 1 and cache.disk_reads == 5
    # a kept run whose state changes: put into the kept disk part, no file read
    assert view(cache, state_of(runs["c"], status="cancelled"), "c")["status"] == "cancelled"
    assert cache.disk_reads == 5
    with pytest.raises(ValueError):  # a bound of nothing would keep nothing: refused
        RunViewCache(state_ttl=1, capacity=0)


def test_a_body_is_served_as_built_until_the_state_or_the_files_change(run) -> None:
    paths, cache = run
    state = state_of(paths)
    assert cache.cached_body("cached", state) is None  # nothing built yet
    body = asyncio.run(cache.body("cached", state))
    assert cache.disk_reads == 1 and cache.cached_body("cached", state) == body
    assert cache.cached_body("cached", dict(state)) == body and cache.renders == 1
    moved = state | {"stage": "judge"}  # a new state: never the old body; rebuilt without reading files
    assert cache.cached_body("cached", moved) is None
    assert asyncio.run(cache.body("cached", moved)) != body and cache.disk_reads == 1
    finish_shard(paths, "sample", 0)  # a finished shard: the next answer must be built anew
    assert cache.cached_body("cached", moved) is None
    rebuilt = asyncio.run(cache.body("cached", moved))
    assert rebuilt != body and cache.cached_body("cached", moved) == rebuilt and cache.disk_reads == 2
    paths.changes.unlink()  # a run made by an older spar: never served from the cache
    asyncio.run(cache.body("cached", moved))
    assert cache.cached_body("cached", moved) is None and cache.disk_reads == 3


def test_unknown_removed_and_overlong_runs_are_404(run, tmp_path: Path) -> None:
    from shared.errors import RunNotFoundError

    paths, cache = run
    with pytest.raises(RunNotFoundError, match="no run"):
        cache.cached_body("nope", None)
    with pytest.raises(RunNotFoundError, match="no run"):
        asyncio.run(cache.body("nope", None))
    with pytest.raises(RunNotFoundError, match="at most"):
        cache.cached_body("x" * 500, {"run_dir": str(paths.root)})
    with pytest.raises(RunNotFoundError, match="is gone"):
        cache.cached_body("gone", {"run_dir": str(tmp_path / "nowhere")})


class CountingRedis:
    """An async Redis with one run hash, counting reads."""

    def __init__(self, state: dict[str, str]) -> None:
        self.state = state
        self.reads = 0

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        self.reads += 1
        if key != "spar:run:cached":
            return {}
        return {k.encode(): v.encode() for k, v in self.state.items()}


def test_states_are_reused_for_the_ttl_and_forgotten_on_a_local_change() -> None:
    redis = CountingRedis({"status": "running"})
    states = RunViewCache(state_ttl=60)

    async def reads() -> list:
        out = [await states.state("cached", redis) for _ in range(5)]
        redis.state = {"status": "cancelled"}
        out.append(await states.state("cached", redis))  # within the TTL: not seen yet
        states.forget_state("cached")  # what the scheduler calls after it writes the run's state
        out.append(await states.state("cached", redis))
        out.append(await states.state("nope", redis))
        out.append(await states.state("nope", redis))
        out.append(await states.state("x" * 500, redis))  # overlong: never a Redis read
        return out

    out = asyncio.run(reads())
    assert [s["status"] for s in out[:7]] == ["running"] * 6 + ["cancelled"]
    assert out[7] is None and out[8] is None and out[9] is None
    assert redis.reads == 1 + 1 + 2  # one per TTL, one after forget, unknown runs never kept
    assert len(states) == 1 and "nope" not in states
    no_cache = RunViewCache(state_ttl=0)
    asyncio.run(no_cache.state("cached", redis))
    asyncio.run(no_cache.state("cached", redis))
    assert redis.reads == 6 and len(no_cache) == 0


def test_the_scheduler_reports_each_state_it_writes(tmp_path: Path) -> None:
    from redis import Redis
    from service_harness import private_redis

    from services.scheduler import Scheduler
    from shared.runtime.artifacts import RunPaths

    with private_redis(tmp_path) as url:
        scheduler = Scheduler(Redis.from_url(url))
        changed: list[str] = []
        scheduler.on_change = changed.append
        paths = RunPaths(tmp_path / "r1")
        scheduler.register(paths)
        scheduler._set("r1", status="running")
        scheduler._set_if_active("r1", stage="judge")
        assert changed == ["r1", "r1", "r1"]
        # what every tick re-asserts: nothing changed, so nothing is written or reported
        before = scheduler.state("r1")
        assert scheduler._set_if_active("r1", status="running", stage="judge") is True
        assert changed == ["r1"] * 3 and scheduler.state("r1") == before
        assert scheduler._set_if_active("r1", stage="refine") is True  # one field differs: written
        after = scheduler.state("r1")
        assert changed == ["r1"] * 4 and after["stage"] == "refine"
        assert float(after["updated_at"]) >= float(before["updated_at"])
        scheduler._set("r1", status="cancelled")
        assert scheduler._set_if_active("r1", status="running") is False  # a final state wins
        assert scheduler.state("r1")["status"] == "cancelled" and changed == ["r1"] * 5


def test_concurrent_polls_build_each_changed_view_once_and_see_every_change(
    run, tmp_path: Path, monkeypatch
) -> None:
    """Through the route: 20 clients polling at once cause one build, and so does each change;
    a finished shard shows in the very next answers."""
    import asyncio
    import json
    import time

    import httpx
    from redis import Redis
    from service_harness import TOKEN, private_redis

    from services.api import Settings, create_app
    from services.scheduler import Scheduler

    paths, _ = run
    builds: list[str] = []
    real_read = views.disk_view

    def slow_read(run_id, paths):  # noqa: ANN001, ANN202
        builds.append(run_id)
        time.sleep(0.3)  # a long build: without single-flight every poll meanwhile would start one
        return real_read(run_id, paths)

    monkeypatch.setattr(views, "disk_view", slow_read)
    done = lambda body: next(p for p in json.loads(body)["progress"] if p["stage"] == "sample")["done"]  # noqa: E731

    with private_redis(tmp_path) as url:
        app = create_app(
            Settings(api_token=TOKEN, scheduler=False, redis_url=url, data_root=paths.root.parent)
        )
        Scheduler(Redis.from_url(url)).register(paths)

        async def scenario() -> tuple[list, int, list, list]:
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as c:
                poll = lambda: asyncio.gather(*(c.get(f"/v1/runs/{paths.run_id}") for _ in range(20)))  # noqa: E731
                first = await poll()
                builds_first = len(builds)
                again = await poll()  # nothing changed: no build at all
                finish_shard(paths, "sample", 0)
                second = await poll()
            return first, builds_first, again, second

        first, builds_first, again, second = asyncio.run(scenario())
    assert {r.status_code for r in first + again + second} == {200}
    assert builds_first == 1 and len({r.content for r in first}) == 1  # one build for 20 polls
    assert {r.content for r in again} == {first[0].content}
    assert {done(r.content) for r in second} == {1} and done(first[0].content) == 0  # seen at once
    assert len(builds) == 2  # and one build for the change, however many polled


def test_the_cached_view_layer_answers_hits_only_and_exactly_as_the_route_would(run, tmp_path: Path) -> None:
    """``CachedRunView`` (services/api/cached_view.py) serves a cached body before FastAPI; anything
    else (no token, a wrong one, an unknown run, a change, another route) is the route's answer."""
    import asyncio

    import httpx
    from redis import Redis
    from service_harness import TOKEN, private_redis

    from services.api import Settings, create_app
    from services.scheduler import Scheduler

    paths, _ = run
    with private_redis(tmp_path) as url:
        app = create_app(
            Settings(
                api_token=TOKEN, scheduler=False, redis_url=url, data_root=paths.root.parent, view_state_ttl=0
            )
        )
        scheduler = Scheduler(Redis.from_url(url))
        scheduler.register(paths)
        view = f"/v1/runs/{paths.run_id}"

        async def scenario() -> dict:
            transport = httpx.ASGITransport(app=app)
            good = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
                out = {"built": await c.get(view, headers=good)}
                fast = app.state.cached_run_view
                out["hits_after_build"] = fast.hits
                out["hit"] = await c.get(view, headers=good)
                out["hit_lower_scheme"] = await c.get(view, headers={"authorization": f"bearer {TOKEN}"})
                out["hits_after_hit"] = fast.hits
                out["no_token"] = await c.get(view)
                out["wrong_token"] = await c.get(view, headers={"Authorization": f"Bearer {TOKEN}x"})
                out["other_scheme"] = await c.get(view, headers={"Authorization": f"Basic {TOKEN}"})
                out["unknown"] = await c.get("/v1/runs/nope", headers=good)
                out["report_path"] = await c.get(view + "/report?format=md", headers=good)
                out["hits_after_misses"] = fast.hits
                scheduler.cancel(paths.run_id, paths)  # a new state: the next answer is built anew
                out["cancelled"] = await c.get(view, headers=good)
                finish_shard(paths, "sample", 0)  # a finished shard: likewise
                out["shard_done"] = await c.get(view, headers=good)
                out["hits_after_changes"] = fast.hits
                out["hit_again"] = await c.get(view, headers=good)
                out["hits_end"] = fast.hits
            return out

        out = asyncio.run(scenario())
    built, hit = out["built"], out["hit"]
    assert built.status_code == hit.status_code == out["hit_lower_scheme"].status_code == 200
    assert hit.content == built.content == out["hit_lower_scheme"].content
    assert hit.headers["content-type"] == built.headers["content-type"] == "application/json"
    assert hit.headers["content-length"] == built.headers["content-length"]
    assert out["hits_after_build"] == 0 and out["hits_after_hit"] == 2
    for refused in ("no_token", "wrong_token", "other_scheme"):  # the route's 401, never the cached body
        assert out[refused].status_code == 401 and out[refused].headers["www-authenticate"] == "Bearer"
        assert "token" in out[refused].json()["detail"]
    assert out["unknown"].status_code == 404 and "no run" in out["unknown"].json()["detail"]
    report = out["report_path"]
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/markdown")
    assert out["hits_after_misses"] == 2
    assert out["cancelled"].json()["status"] == "cancelled"
    progress = lambda r: next(p for p in r.json()["progress"] if p["stage"] == "sample")["done"]  # noqa: E731
    assert progress(out["shard_done"]) == 1 and progress(out["cancelled"]) == 0
    assert out["hits_after_changes"] == 2  # both changes went through the route
    assert out["hit_again"].content == out["shard_done"].content and out["hits_end"] == 3
