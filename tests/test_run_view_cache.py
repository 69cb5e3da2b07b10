"""`GET /v1/runs/{id}` reads the run directory only when the run's files changed (services/api/views.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_iterations import write_config

from services.api import views
from services.api.views import DiskViewCache, run_view
from services.runs import create_run, load_config_file
from workers.stages import write_stage_manifest
from workers.stages.common import StageResult, StageSpec, load_config, record_done


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
    scheduler.states["cached"] = {"status": "running", "stage": "sample", "updated_at": "1"}
    return paths, scheduler


def finish_shard(paths, stage: str, shard: int) -> None:
    spec = StageSpec(run_dir=str(paths.root), iteration=0, stage=stage, shard=shard)
    paths.shard(0, stage, shard).parent.mkdir(parents=True, exist_ok=True)
    paths.shard(0, stage, shard).write_text("")
    record_done(paths, spec, load_config(paths), StageResult(counts={"prompts": 2, "responses": 8}))


def test_an_unchanged_run_is_served_without_reading_its_files(run) -> None:
    paths, scheduler = run
    first = run_view("cached", paths, scheduler)
    second = run_view("cached", paths, scheduler)
    assert second == first and views.DISK_VIEWS.builds == 1
    # the scheduler's state is live: a new status shows at once, still without a rebuild
    scheduler.states["cached"] = {"status": "cancelled", "stage": "sample", "updated_at": "2"}
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
