"""The dashboard in a real headless Chromium: a finished tiny run, served by the real API process.

Why a browser: the page draws its charts in JavaScript, so only a browser shows whether the numbers
on screen are the API's numbers. We drive Debian's Chromium (``/usr/bin/chromium``) with the
Playwright Python package and never let Playwright download a browser. A missing Chromium is a
failure with the fix, not a skip: a skipped UI test would hide a broken dashboard in CI.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from service_harness import PROMPTS, TOKEN, RedisServer, Stack, data_root, tiny_run_body

from shared.runtime.artifacts import RunPaths

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


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[tuple[Stack, str]]:
    """One finished tiny run behind a real API process, shared by this module's browser tests (the
    run is the slow part). The tests only add stand-in manifests to it, which no other test reads."""
    tmp = tmp_path_factory.mktemp("dashboard")
    server = RedisServer(tmp / "redis").start()
    s = Stack(root=data_root(tmp, tiny_model_path, PROMPTS), redis_url=server.url)
    try:
        run_id = finished_run(s.root, s.redis_url)
        s.start_api()
        yield s, run_id
    finally:
        s.close()
        server.stop()


def need_chromium() -> None:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium` "
            "(.ci/run does this); the dashboard test needs a real browser"
        )


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
    paths = RunPaths(run_dir)
    for stage, manifest in manifests.items():
        (run_dir / "iter_0" / stage).mkdir(parents=True, exist_ok=True)
        (run_dir / "iter_0" / stage / "manifest.json").write_text(json.dumps(manifest))
        paths.note_change(f"manifest 0 {stage}")  # as a stage does: the API caches its view until then


def _values(page, chart_id: str) -> list:
    return json.loads(page.get_attribute(f"#{chart_id}", "data-values"))


def test_dashboard_shows_the_runs_numbers(served: tuple[Stack, str]) -> None:
    need_chromium()
    from playwright.sync_api import sync_playwright

    stack, run_id = served
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


def _rendered_nodes(page) -> list[dict]:
    """What the tree view shows of each node, in screen order."""
    return page.eval_on_selector_all(
        "#tree .node",
        """nodes => nodes.map(n => ({
            id: Number(n.dataset.nodeId),
            parent: n.dataset.parent === "" ? null : Number(n.dataset.parent),
            depth: Number(n.dataset.depth),
            value: Number(n.dataset.value),
            on_success_path: n.dataset.onPath === "true",
            response: n.querySelector("pre.response").textContent,
            judgment: n.querySelector("pre.judgment-text").textContent,
            raw: n.querySelector("pre.raw-text") ? n.querySelector("pre.raw-text").textContent : null,
            votes: n.querySelector(".node-votes").textContent,
            indent: getComputedStyle(n).marginLeft,
            success: n.classList.contains("success"),
        }))""",
    )


def test_dashboard_inspects_an_iteration_and_opens_the_report(served: tuple[Stack, str]) -> None:
    """Trees listed as the API pages them; a clicked tree shows exactly the API's nodes (indented,
    the success path marked); the pairs tab; the status filter; the report opened with the token
    as a blob: page whose inline style the inherited CSP allows; the Markdown saved."""
    need_chromium()
    from playwright.sync_api import sync_playwright

    stack, run_id = served
    base = f"/v1/runs/{run_id}/iterations/0"
    with stack.client() as c:
        trees = c.get(f"{base}/trees", params={"limit": 20}).json()
        successes = c.get(f"{base}/trees", params={"status": "success", "limit": 20}).json()
        pairs = c.get(f"{base}/pairs/sample", params={"limit": 20}).json()
    assert trees["total"] > 0 and pairs["total"] > 0
    tree = max(trees["trees"], key=lambda t: (len(t["success_path"]), len(t["nodes"])))
    assert len(tree["success_path"]) >= 2  # the tiny run (seed 3) refines some negative to success

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1300}, accept_downloads=True)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{stack.url}/#token={TOKEN}")
            page.wait_for_selector('#inspect-body[data-state="loaded"] #tree-list', timeout=30_000)
            assert page.input_value("#inspect-iteration") == "0"

            rows = page.locator("#tree-list tbody tr")
            assert [rows.nth(k).get_attribute("data-key") for k in range(rows.count())] == [
                t["key"] for t in trees["trees"]
            ]
            assert [rows.nth(k).get_attribute("data-status") for k in range(rows.count())] == [
                t["status"] for t in trees["trees"]
            ]
            assert page.get_attribute("#trees", "data-total") == str(trees["total"])

            page.click(f'#tree-list tr[data-key="{tree["key"]}"]')
            page.wait_for_selector(f'#tree[data-key="{tree["key"]}"]', timeout=10_000)
            shown = _rendered_nodes(page)
            by_id = {n["id"]: n for n in tree["nodes"]}
            assert sorted(n["id"] for n in shown) == sorted(by_id)
            for n in shown:
                api = by_id[n["id"]]
                for key in ("parent", "depth", "on_success_path", "response", "judgment", "raw"):
                    assert n[key] == api[key], (n["id"], key)
                assert n["value"] == pytest.approx(api["value"])
                assert n["indent"] == f"{24 * api['depth']}px"
                assert n["success"] == (n["id"] == tree["success_id"])
                for name, count in api["vote"].items():
                    assert f"{name} {count}" in n["votes"]
            order = [n["id"] for n in shown]  # tree order: every parent above its children
            assert order[0] == 0 and all(order.index(by_id[i]["parent"]) < order.index(i) for i in order[1:])
            assert [n["id"] for n in shown if n["on_success_path"]] == tree["success_path"]
            root_judgment = page.locator('#tree .node[data-node-id="0"] details.judgment')
            assert root_judgment.get_attribute("open") is not None  # the root's judgment is shown
            page.screenshot(path=str(ARTIFACTS / "dashboard-tree.png"), full_page=True)

            page.select_option("#inspect-status", "success")
            page.wait_for_function(
                "n => (document.querySelector('#trees') || {dataset: {}}).dataset.total === n",
                arg=str(successes["total"]),
                timeout=10_000,
            )
            statuses = page.eval_on_selector_all("#tree-list tbody tr", "rs => rs.map(r => r.dataset.status)")
            assert statuses == ["success"] * len(successes["trees"])
            assert page.locator(f'#tree[data-key="{tree["key"]}"]').count() == 1  # still open

            page.click("#tab-pairs")
            page.wait_for_selector("#pairs .pair, #pairs .empty", timeout=10_000)
            cards = page.locator("#pairs .pair")
            assert cards.count() == len(pairs["pairs"])
            for k, pair in enumerate(pairs["pairs"]):
                card = cards.nth(k)
                assert card.get_attribute("data-tree") == pair["tree"]
                assert card.locator("pre.prompt").text_content() == pair["prompt"]
                assert card.locator("pre.chosen-text").text_content() == pair["chosen"]
                assert card.locator("pre.rejected-text").text_content() == pair["rejected"]
            assert page.is_hidden("#status-filter") and page.locator("#tree .node").count() == 0

            with context.expect_page(timeout=30_000) as opened:
                page.click(f'#runs .report-link[data-run="{run_id}"]')
            report = opened.value
            report.wait_for_url("blob:**", timeout=30_000)
            report.wait_for_load_state()
            assert run_id in report.locator("body").inner_text()
            # the report's style and its chart script run: the inherited CSP allows both by hash
            report.wait_for_selector("html[data-charts='drawn']", timeout=10_000)
            assert report.locator("svg.chart").count() >= 1
            assert report.eval_on_selector("table", "t => getComputedStyle(t).borderCollapse") == "collapse"
            assert page.url.startswith(stack.url)  # the dashboard stayed where it was

            with page.expect_download(timeout=30_000) as saved:
                page.click(f'#runs .report-md[data-run="{run_id}"]')
            download = saved.value
            assert download.suggested_filename == f"{run_id}-report.md"
            assert f"`{run_id}`" in Path(download.path()).read_text()
            assert page.get_attribute("#detail", "data-loaded") == run_id  # the buttons select no run
            assert errors == []
        finally:
            browser.close()
