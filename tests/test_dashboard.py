"""The dashboard in a real headless Chromium: a finished tiny run, served by the real API process.

Why a browser: the page draws its charts in JavaScript, so only a browser shows whether the numbers
on screen are the API's numbers. We drive Debian's Chromium (``/usr/bin/chromium``) with the
Playwright Python package and never let Playwright download a browser. A missing Chromium is a
failure with the fix, not a skip: a skipped UI test would hide a broken dashboard in CI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from redis import Redis
from service_harness import PROMPTS, TOKEN, RedisServer, Stack, data_root, tiny_run_body

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def finished_run(root: Path, redis_url: str) -> str:
    """Run sample/judge/refine/assemble in-process (seconds on the tiny model), then register the run
    as succeeded, as the scheduler would have: cheaper than starting three workers."""
    from services.local import LocalExecutor
    from services.runs import create_run, resolve_paths
    from services.scheduler import Scheduler, run_key
    from shared.config import RunConfig

    config = RunConfig.model_validate(tiny_run_body("dash", seed=3, shard_size=2))
    paths = create_run(resolve_paths(config, root), root / "runs")
    LocalExecutor.for_run(paths).run()
    redis = Redis.from_url(redis_url)
    Scheduler(redis).register(paths)
    redis.hset(run_key(paths.run_id), mapping={"status": "succeeded"})
    return paths.run_id


@pytest.fixture()
def stack(tmp_path: Path, tiny_model_path: Path, redis_server: RedisServer):
    s = Stack(root=data_root(tmp_path, tiny_model_path, PROMPTS), redis_url=redis_server.url)
    yield s
    s.close()


def add_stand_in_manifests(run_dir: Path) -> None:
    """Manifests of the stages too slow for this test (training, IFEval), in the shape their stages
    write, so the API serves loss and evaluation numbers and the dashboard must chart them."""
    stub = {
        "run_id": run_dir.name,
        "config_hash": "test",
        "engine": {},
        "iteration": 0,
        "shard_seconds": 1.0,
        "shards": 1,
        "written_at": 0.0,
    }
    manifests = {
        "iopo_groups": stub
        | {
            "stage": "iopo_groups",
            "counts": {"attempted": 5, "verified": 3, "candidates": 10, "dropped_unparsable": 2},
            "models": {"refiner": "v0"},
        },
        "train_actor": stub
        | {
            "stage": "train_actor",
            "counts": {"records": 3},
            "models": {"actor_new": "v1"},
            "metrics": {"objective": "dpo", "steps": 4, "loss_curve": [0.69, 0.61, 0.55, 0.52]},
        },
        "eval": stub
        | {
            "stage": "eval",
            "counts": {"ifeval_versions": 2, "judge_versions": 2},
            "models": {},
            "metrics": {
                "ifeval": [
                    {
                        "version": "v0",
                        "prompt_strict": 0.2,
                        "instruction_strict": 0.3,
                        "prompt_loose": 0.25,
                        "instruction_loose": 0.35,
                        "average": 0.275,
                        "n_prompts": 8,
                    },
                    {
                        "version": "v1",
                        "prompt_strict": 0.3,
                        "instruction_strict": 0.4,
                        "prompt_loose": 0.35,
                        "instruction_loose": 0.45,
                        "average": 0.375,
                        "n_prompts": 8,
                    },
                ],
                "judge": [
                    {"version": "v0", "accuracy": 0.5, "invalid_rate": 0.1, "undecided_rate": 0.0, "n": 10},
                    {"version": "v1", "accuracy": 0.7, "invalid_rate": 0.0, "undecided_rate": 0.0, "n": 10},
                ],
            },
        },
    }
    for stage, manifest in manifests.items():
        (run_dir / "iter_0" / stage).mkdir(parents=True, exist_ok=True)
        (run_dir / "iter_0" / stage / "manifest.json").write_text(json.dumps(manifest))


def _values(page, chart_id: str) -> list:
    return json.loads(page.get_attribute(f"#{chart_id}", "data-values"))


def test_dashboard_shows_the_runs_numbers(stack: Stack) -> None:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium` "
            "(.ci/run does this); the dashboard test needs a real browser"
        )
    from playwright.sync_api import sync_playwright

    run_id = finished_run(stack.root, stack.redis_url)
    stack.start_api()
    with stack.client() as c:
        run = c.get(f"/v1/runs/{run_id}").json()
        anonymous = c.get("/", headers={"Authorization": ""})
    assert anonymous.status_code == 200 and "spar dashboard" in anonymous.text
    assert run["status"] == "succeeded"
    metrics = run["iterations"][0]["metrics"]

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{stack.url}/#token={TOKEN}")
            page.wait_for_selector(f'#detail[data-loaded="{run_id}"]', timeout=30_000)
            page.wait_for_selector("#chart-pairs", timeout=10_000)

            assert "token=" not in page.url  # the token leaves the address bar once stored
            assert page.get_attribute("#run-head", "data-status") == "succeeded"
            assert page.locator(f'#runs tr[data-run="{run_id}"]').count() == 1

            assert _values(page, "chart-pairs") == [metrics["pairs"]]
            assert _values(page, "chart-negatives") == [metrics["negatives"]]
            assert _values(page, "chart-success-rate") == [pytest.approx(metrics["success_rate"])]
            assert _values(page, "chart-expansions") == [pytest.approx(metrics["mean_expansions_per_tree"])]
            for key in ("pairs", "negatives", "trees"):
                cell = page.locator(f'#counts td[data-metric="{key}"][data-iteration="0"]')
                assert cell.inner_text() == str(metrics[key])

            rows = page.locator("#timeline tbody tr[data-stage]")
            assert rows.count() == len(run["progress"])
            for k, prog in enumerate(run["progress"]):
                row = rows.nth(k)
                assert row.get_attribute("data-stage") == prog["stage"]
                assert row.locator("td").nth(3).inner_text() == f"{prog['done']}/{prog['total']}"
                assert prog["complete"] and "complete" in row.inner_text()

            assert page.locator('#counts td[data-metric="iopo_verified"]').count() == 0  # no such stage
            assert page.locator("#no-training").inner_text() == "no training yet"
            assert page.locator("#no-evaluations").inner_text() == "no evaluations yet"

            add_stand_in_manifests(Path(run["run_dir"]))
            with stack.client() as c:
                later = c.get(f"/v1/runs/{run_id}").json()["iterations"][0]
            page.reload()
            page.wait_for_selector("#chart-judge", timeout=30_000)
            ifeval, judge = later["evaluation"]["ifeval"], later["evaluation"]["judge"]
            for key, value in (("iopo_attempted", 5), ("iopo_verified", 3)):
                assert later["metrics"][key] == value
                cell = page.locator(f'#counts td[data-metric="{key}"][data-iteration="0"]')
                assert cell.inner_text() == str(value)
            assert _values(page, "chart-ifeval") == [r["average"] for r in ifeval]
            series = json.loads(page.get_attribute("#chart-ifeval", "data-series"))
            assert series["prompt_strict"] == [r["prompt_strict"] for r in ifeval]
            assert _values(page, "chart-judge") == [r["accuracy"] for r in judge]
            assert page.locator("#chart-judge text", has_text="v1").count() >= 1
            training = later["training"][0]
            loss = _values(page, "chart-loss-0-train_actor")
            first_last = [training["first_loss"], training["last_loss"]]
            assert loss == (training.get("loss_curve") or first_last)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
