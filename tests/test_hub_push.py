"""`hub:` pushes each published version with huggingface_hub, to a stub of the Hub's API on a free
loopback port (``tests/hub_stub.py``): what is uploaded, where, with which token; a retried job
pushes nothing twice; a failed push keeps the version and says so; the config and the dry run
refuse what cannot work (a bad repo id, a token missing from the environment) before any training.
No test reaches a real hub; HF_HUB_OFFLINE=1 stays set (conftest), as in the Makefile.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hub_stub import HubStub
from pydantic import ValidationError

from services.preflight import check_hub
from services.runs import confine, format_validation_error
from shared.config import RunConfig
from shared.errors import ConfigError, HubPushError
from shared.records import ShardOutput, StageSpec
from shared.runtime.artifacts import RunPaths
from shared.runtime.versions import version_dir
from workers.hub import push_run, push_version
from workers.stages.common import StageContext
from workers.stages.train import _train

TOKEN_ENV = "HUB_TEST_TOKEN"
TOKEN = "hf_stubtoken0123456789"
WEIGHTS = b"\x00\x01weights" * 16


@pytest.fixture()
def stub():
    server = HubStub().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


class _NoEngines:
    def release(self) -> None:
        pass


class _Trainer:
    """Stands in for DPO: writes a model folder's files and counts how often it trained."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, start_from, records, settings, out_dir: Path, **_: Any) -> dict[str, Any]:
        self.calls += 1
        (out_dir / "model.safetensors").write_bytes(WEIGHTS)
        (out_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
        return {"steps": 1, "loss_curve": [0.69]}


def _run(tmp_path: Path, stub: HubStub, **hub: Any) -> tuple[RunPaths, RunConfig]:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    settings = {"repo_id": "myorg/spar-{role}", "revision": "{version}", "endpoint": stub.url}
    settings |= {"token_env": TOKEN_ENV} | hub
    config = RunConfig.model_validate(
        {
            "prompts": str(tmp_path / "p.jsonl"),
            "actor": {"model": str(base)},
            "refiner": {"model": str(base)},
            "hub": settings,
        }
    )
    paths = RunPaths(tmp_path / "runs" / "hubrun")
    pairs = paths.data_file(0, "pairs.jsonl")
    pairs.parent.mkdir(parents=True)
    pairs.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n')
    return paths, config


def _train_actor(paths: RunPaths, config: RunConfig, trainer: _Trainer) -> ShardOutput:
    spec = StageSpec(run_dir=str(paths.root), iteration=0, stage="train_actor", shard=0)
    ctx = StageContext(paths, spec, config, _NoEngines())
    return _train(ctx, "actor", "pairs.jsonl", config.train_actor, "preference", trainer, "dpo")


def test_a_trained_version_is_pushed_with_its_card_weights_and_metadata(tmp_path, stub) -> None:
    from huggingface_hub import constants

    paths, config = _run(tmp_path, stub)
    output = _train_actor(paths, config, _Trainer())

    folder = version_dir(paths, "actor", 1)
    assert stub.repos == {"myorg/spar-actor": {"visibility": "private", "type": "model"}}
    assert stub.branches == {("myorg/spar-actor", "v1")}  # one branch per version
    (commit,) = stub.commits
    assert (commit.repo_id, commit.revision) == ("myorg/spar-actor", "v1")
    assert commit.summary == "spar: actor v1 of run hubrun"
    assert set(commit.files) == {"README.md", "config.json", "model.safetensors", "spar_version.json"}
    assert commit.files["model.safetensors"] == WEIGHTS
    card = commit.files["README.md"].decode()
    assert card == (folder / "README.md").read_text() and card.startswith("---\nlibrary_name: transformers")
    assert "# hubrun: actor v1" in card and "- dpo" in card
    assert json.loads(commit.files["spar_version.json"])["version"] == "v1"
    assert {r.authorization for r in stub.requests} == {f"Bearer {TOKEN}"}  # every request, this token
    (pushed,) = output.metrics["hub"]
    assert pushed["status"] == "pushed" and pushed["repo_id"] == "myorg/spar-actor"
    assert pushed["commit_url"] == f"{stub.url}/myorg/spar-actor/commit/{commit.oid}"
    assert json.loads(paths.hub_record("actor", 1).read_text())["status"] == "pushed"
    assert constants.HF_HUB_OFFLINE  # lifted for the push's own requests only, then set back


def test_a_retried_job_neither_trains_nor_pushes_again(tmp_path, stub) -> None:
    paths, config = _run(tmp_path, stub)
    trainer = _Trainer()
    _train_actor(paths, config, trainer)
    seen = len(stub.requests)

    again = _train_actor(paths, config, trainer)  # the job retried after its version was published
    assert trainer.calls == 1 and len(stub.requests) == seen  # the record says: pushed as it is
    assert again.metrics["hub"][0]["status"] == "pushed"

    paths.hub_record("actor", 1).unlink()  # the record lost: the push runs again, and the repo and
    assert push_version(paths, config, "actor", 1).status == "pushed"  # branch that exist are no error
    assert len(stub.repos) == 1 and len(stub.commits) == 2


class _Events(logging.Handler):
    """The structured log lines of one logger (caplog misses them once ``spar`` stops propagating)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_failed_push_keeps_the_version_and_reports_it(tmp_path, stub) -> None:
    paths, config = _run(tmp_path, stub)
    stub.fail["create"] = 500
    events = _Events()
    logging.getLogger("spar.hub").addHandler(events)
    try:
        output = _train_actor(paths, config, _Trainer())
    finally:
        logging.getLogger("spar.hub").removeHandler(events)

    assert (version_dir(paths, "actor", 1) / "model.safetensors").read_bytes() == WEIGHTS  # still published
    (failed,) = output.metrics["hub"]
    assert failed["status"] == "failed" and "HTTP 500" in failed["error"]
    assert "myorg/spar-actor" in failed["error"]
    (event,) = [r for r in events.records if getattr(r, "event", "") == "hub.push_failed"]
    assert event.repo_id == "myorg/spar-actor" and "retry later" in event.error
    assert not stub.commits

    stub.fail.clear()  # `spar hub push RUN_DIR` later: the failed push is made, nothing else
    (pushed,) = push_run(paths, config)
    assert pushed.status == "pushed" and len(stub.commits) == 1


def test_a_required_push_fails_the_stage_but_never_the_version(tmp_path, stub) -> None:
    paths, config = _run(tmp_path, stub, required=True)
    trainer = _Trainer()
    stub.fail["commit"] = 403  # not retried by huggingface_hub, unlike a 5xx on commit
    with pytest.raises(HubPushError, match="myorg/spar-actor.*published locally"):
        _train_actor(paths, config, trainer)
    assert (version_dir(paths, "actor", 1) / "spar_version.json").exists()
    assert "refused the token in HUB_TEST_TOKEN (HTTP 403)" in paths.hub_record("actor", 1).read_text()

    stub.fail.clear()  # the retried job pushes without training again
    output = _train_actor(paths, config, trainer)
    assert trainer.calls == 1 and output.metrics["hub"][0]["status"] == "pushed"


def test_offline_mode_blocks_the_push_when_not_overridden(tmp_path, stub) -> None:
    paths, config = _run(tmp_path, stub, override_offline=False)
    output = _train_actor(paths, config, _Trainer())
    error = output.metrics["hub"][0]["error"]
    assert "HF_HUB_OFFLINE=1 blocks" in error and "hub.override_offline: true" in error
    assert stub.requests == []


def test_a_token_missing_on_the_training_machine_is_recorded(tmp_path, stub, monkeypatch) -> None:
    paths, config = _run(tmp_path, stub)
    monkeypatch.delenv(TOKEN_ENV)
    output = _train_actor(paths, config, _Trainer())
    error = output.metrics["hub"][0]["error"]
    assert "hub.token_env: the environment variable HUB_TEST_TOKEN is not set" in error
    assert stub.requests == []


def test_roles_not_listed_are_not_pushed(tmp_path, stub) -> None:
    paths, config = _run(tmp_path, stub, roles=["refiner"], repo_id="myorg/refiner")
    assert "hub" not in _train_actor(paths, config, _Trainer()).metrics
    assert stub.requests == []


def _problems(hub: dict[str, Any], name: str = "spar") -> str:
    raw = {"name": name, "prompts": "p.jsonl", "actor": {"model": "tiny"}, "refiner": {"model": "tiny"}}
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(raw | {"hub": {"repo_id": "org/spar-{role}"} | hub})
    return " ".join(format_validation_error(info.value, "c.yaml").split())


@pytest.mark.parametrize(
    ("hub", "expected"),
    [
        ({"repo_id": "spar-{role}"}, "hub.repo_id: Value error, repo_id 'spar-{role}' must be 'namespace/"),
        ({"repo_id": "org/spar--{role}"}, "'--' and '..' not allowed"),
        ({"repo_id": "org/spar-{rol}"}, "unknown placeholder {rol} (did you mean {role}?)"),
        ({"repo_id": "org/spar"}, "put {role} in repo_id (e.g. 'myorg/spar-{role}') or in revision"),
        ({"revision": "v 1"}, "hub.revision: Value error, revision 'v 1' is not a branch name"),
        ({"endpoint": "ftp://hub"}, "hub.endpoint: Value error, endpoint 'ftp://hub' is not an http(s) URL"),
        ({"token_env": "hf_abcdefghijklmnop"}, "never the token itself"),
        ({"token_env": "SPAR_API_TOKEN"}, "names one of spar's own settings"),
        ({"privat": True}, "hub.privat: unknown key (did you mean 'private'?)"),
    ],
)
def test_the_config_refuses_what_cannot_be_pushed(hub: dict[str, Any], expected: str) -> None:
    assert expected in _problems(hub)


def test_a_run_name_too_long_for_a_repo_is_refused_up_front() -> None:
    problems = _problems({"repo_id": "org/{run}-{role}-{version}"}, name="n" * 64)
    assert "shorten the name or the template" in problems


def test_the_dry_run_checks_the_token_before_any_work(tmp_path, monkeypatch) -> None:
    from services.cli import main

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(
        "prompts: p.jsonl\nactor: {model: base}\nrefiner: {model: base}\n"
        f"hub: {{repo_id: 'org/spar-{{role}}', token_env: {TOKEN_ENV}}}\n"
    )
    monkeypatch.delenv(TOKEN_ENV)
    for extra in ([], ["--dry-run"]):
        assert main(["run", str(config), "--runs-dir", str(tmp_path / "runs"), "--no-progress", *extra]) == 2
    assert not (tmp_path / "runs").exists()

    parsed = RunConfig.model_validate(
        {"prompts": "p", "actor": {"model": "t"}, "refiner": {"model": "t"}, "hub": {"repo_id": "o/x-{role}"}}
    )
    missing = r"hub.token_env: the environment variable HF_TOKEN is not set.*export HF_TOKEN="
    with pytest.raises(ConfigError, match=missing):
        check_hub(parsed, environ={})
    assert "pushed to o/x-{role} (revision main) on https://huggingface.co" in str(
        check_hub(parsed, environ={"HF_TOKEN": "x"})
    )
    strict = parsed.model_copy(update={"hub": parsed.hub.model_copy(update={"override_offline": False})})
    with pytest.raises(ConfigError, match="hub.override_offline: HF_HUB_OFFLINE=1 is set"):
        check_hub(strict, environ={"HF_TOKEN": "x", "HF_HUB_OFFLINE": "1"})


def test_the_api_refuses_a_hub_section_unless_the_operator_allows_it(tmp_path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    config = RunConfig.model_validate(
        {
            "prompts": "p.jsonl",
            "actor": {"model": "tiny"},
            "refiner": {"model": "tiny"},
            "hub": {"repo_id": "o/x-{role}"},
        }
    )
    refused = "hub: pushing models to a hub is disabled on this server.*SPAR_ALLOW_HUB_PUSH=1"
    with pytest.raises(ConfigError, match=refused):
        confine(config, tmp_path)
    assert confine(config, tmp_path, allow_hub_push=True).hub == config.hub


def test_a_failed_push_is_a_warning_and_a_row_of_the_summary(tmp_path, stub) -> None:
    from rich.console import Console

    from services.progress import hub_push_warnings
    from services.summary import iteration_summary, render
    from shared.records import ShardDone
    from shared.runtime.artifacts import write_json_atomic
    from shared.runtime.shards import write_stage_manifest

    paths, config = _run(tmp_path, stub)
    write_json_atomic(paths.config, {"config": config.model_dump(mode="json")})
    stub.fail["create"] = 500
    output = _train_actor(paths, config, _Trainer())
    spec = StageSpec(run_dir=str(paths.root), iteration=0, stage="train_actor", shard=0)
    done = ShardDone(
        spec=spec, config_hash=config.stage_hash("train_actor"), seconds=1.0, finished_at=0.0, **dict(output)
    )
    write_json_atomic(paths.shard_done(0, "train_actor", 0), done.as_record())  # as run_stage records it
    write_stage_manifest(paths, 0, "train_actor")

    (warning,) = hub_push_warnings(paths.root, 0, "train_actor")
    assert "actor v1 is published locally but its push to myorg/spar-actor failed: " in warning
    summary = iteration_summary(paths, 0)
    assert summary["training"][0]["hub"][0]["status"] == "failed"
    console = Console(record=True, width=300, file=io.StringIO())
    console.print(render(summary))
    text = console.export_text()
    assert "hub pushes" in text and "FAILED: " in text and "HTTP 500" in text
