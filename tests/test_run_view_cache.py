"""`GET /v1/runs/{id}` reads the run directory only when the run's files changed (services/api/views.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_iterations import write_config

from services.api import views
from services.api.views import DiskViewCache, run_view
from services.runs import create_run, load_config_file
from shared.records import ShardOutput
from shared.runtime.shards import StageSpec, load_config, write_stage_manifest
from workers.stages.common import record_done


class FakeScheduler:
    """The scheduler's Redis state, as run_view reads it."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, str]] = {}

    def state(self, run_id: str) -> dict[str, str] | None:
        return self.states.get(run_id)


@pytest.fixture()
def run(tmp_path: Path, tiny_model_path: Path, monkeypatch):
    monkeypatch.setattr(views, "DISK_VIEWS", DiskViewCache())
    paths = create_run(load_config_file(write_config(tmp_path, tiny_model_path)), tmp_path / "runs", "cached")
    scheduler = FakeScheduler()
    scheduler.states["cached"] = {
        "status": "running",
        "stage": "sample",
        "updated_at": "1",
        "run_dir": str(paths.root),
    }
    return paths, scheduler


def finish_shard(paths, stage: str, shard: int) -> None:
    spec = StageSpec(run_dir=str(paths.root), iteration=0, stage=stage, shard=shard)
    paths.shard(0, stage, shard).parent.mkdir(parents=True, exist_ok=True)
    paths.shard(0, stage, shard).write_text("")
    record_done(
        paths, spec, load_config(paths), ShardOutput(counts={"prompts": 2, "responses": 8}), seconds=0.0
    )


def test_an_unchanged_run_is_served_without_reading_its_files(run) -> None:
    paths, scheduler = run
    first = run_view("cached", paths, scheduler)
    second = run_view("cached", paths, scheduler)
    assert second == first and views.DISK_VIEWS.builds == 1
    # the scheduler's state is live: a new status shows at once, still without a rebuild
    scheduler.states["cached"] = {
        "status": "cancelled",
        "stage": "sample",
        "updated_at": "2",
        "run_dir": str(paths.root),
    }
    third = run_view("cached", paths, scheduler)
    assert third["status"] == "cancelled" and third["updated_at"] == 2.0 and views.DISK_VIEWS.builds == 1


def test_every_finished_shard_and_stage_shows_in_the_next_view(run) -> None:
    paths, scheduler = run
    shards = paths.num_prompt_shards()
    assert shards > 1
    done = lambda view: next(p for p in view["progress"] if p["stage"] == "sample")  # noqa: E731
    assert done(run_view("cached", paths, scheduler))["done"] == 0
    for k in range(shards):
        finish_shard(paths, "sample", k)
        view = run_view("cached", paths, scheduler)
        assert done(view)["done"] == k + 1 and not done(view)["complete"]
    assert views.DISK_VIEWS.builds == shards + 1
    write_stage_manifest(paths, 0, "sample")
    view = run_view("cached", paths, scheduler)
    assert done(view)["complete"] and view["iterations"][0]["metrics"]["prompts"] == 2 * shards


def test_a_run_without_a_change_journal_is_always_read_afresh(run) -> None:
    paths, scheduler = run
    paths.changes.unlink()  # a run made by an older spar
    run_view("cached", paths, scheduler)
    run_view("cached", paths, scheduler)
    assert views.DISK_VIEWS.builds == 2


def test_the_cache_is_bounded(tmp_path: Path, run) -> None:
    paths, scheduler = run
    cache = DiskViewCache(capacity=2)
    for name in ("a", "b", "c"):
        other = type(paths)(tmp_path / name)
        other.root.mkdir()
        other.note_change("created")
        cache.get(other, dict)
    assert len(cache._entries) == 2 and str(tmp_path / "a") not in cache._entries
    # appends from several writers only grow the journal: the stamp changes with each
    before = paths.change_stamp()
    paths.note_change("done 0 sample 0")
    assert paths.change_stamp() != before and paths.change_stamp()[1] > before[1]


# --- the bodies GET /v1/runs/{id} serves, and the scheduler states behind them ------------------


def test_a_body_is_served_as_built_until_the_state_or_the_files_change(run) -> None:
    from services.api.views import RunViewBodies

    paths, scheduler = run
    bodies = RunViewBodies()
    state = scheduler.states["cached"]
    assert bodies.lookup("cached", state) is None  # nothing built yet
    assert bodies.reads_files("cached", state)  # the first build reads the run's files
    body = bodies.build("cached", state, scheduler)
    assert bodies.lookup("cached", state) == body
    assert bodies.lookup("cached", dict(state)) == body and bodies.serialised == 1
    # a new state alone: rebuilt from memory (the route does that inline, without a thread)
    assert not bodies.reads_files("cached", state | {"stage": "judge"})
    finish_shard(paths, "sample", 0)  # a finished shard: the next answer must be built anew
    assert bodies.reads_files("cached", state)
    assert bodies.lookup("cached", state) is None
    rebuilt = bodies.build("cached", state, scheduler)
    assert rebuilt != body and bodies.lookup("cached", state) == rebuilt
    moved = state | {"status": "cancelled", "updated_at": "9"}  # a new state: never the old body
    assert bodies.lookup("cached", moved) is None
    paths.changes.unlink()  # a run made by an older spar: never served from the cache
    bodies.build("cached", state, scheduler)
    assert bodies.lookup("cached", state) is None


def test_unknown_removed_and_overlong_runs_are_404(run, tmp_path: Path) -> None:
    from services.api.views import RunViewBodies
    from shared.errors import RunNotFoundError

    paths, scheduler = run
    bodies = RunViewBodies()
    with pytest.raises(RunNotFoundError, match="no run"):
        bodies.lookup("nope", None)
    with pytest.raises(RunNotFoundError, match="at most"):
        bodies.lookup("x" * 500, {"run_dir": str(paths.root)})
    with pytest.raises(RunNotFoundError, match="is gone"):
        bodies.lookup("gone", {"run_dir": str(tmp_path / "nowhere")})


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


def test_live_states_reuse_a_read_for_the_ttl_and_forget_on_a_local_change() -> None:
    import asyncio

    from services.api.views import LiveStates

    redis = CountingRedis({"status": "running"})
    states = LiveStates(ttl=60)

    async def reads() -> list:
        out = [await states.get("cached", redis) for _ in range(5)]
        redis.state = {"status": "cancelled"}
        out.append(await states.get("cached", redis))  # within the TTL: not seen yet
        states.forget("cached")  # what the scheduler calls after it writes the run's state
        out.append(await states.get("cached", redis))
        out.append(await states.get("nope", redis))
        out.append(await states.get("nope", redis))
        return out

    out = asyncio.run(reads())
    assert [s["status"] for s in out[:7]] == ["running"] * 6 + ["cancelled"]
    assert out[7] is None and out[8] is None
    assert redis.reads == 1 + 1 + 2  # one per TTL, one after forget, unknown runs never kept
    no_cache = LiveStates(ttl=0)
    asyncio.run(no_cache.get("cached", redis))
    asyncio.run(no_cache.get("cached", redis))
    assert redis.reads == 6


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
    real_build = views.RUN_VIEW_BODIES.build

    def slow_build(run_id, state, scheduler):  # noqa: ANN001, ANN202
        builds.append(run_id)
        time.sleep(0.3)  # a long build: without single-flight every poll meanwhile would start one
        return real_build(run_id, state, scheduler)

    monkeypatch.setattr(views.RUN_VIEW_BODIES, "build", slow_build)
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
