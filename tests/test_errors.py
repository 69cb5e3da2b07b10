"""One errors module (shared/errors.py): every deliberate error has its exit code and HTTP status."""

from __future__ import annotations

import inspect

import pytest
from fastapi.testclient import TestClient

from shared import errors
from shared.errors import ConfigChangedError, EngineStartError, SparError

ERRORS = [
    c
    for _, c in inspect.getmembers(errors, inspect.isclass)
    if issubclass(c, SparError) and c is not SparError
]


def test_every_error_is_a_spar_error_and_the_builtin_a_caller_expects() -> None:
    assert len(ERRORS) >= 15
    assert issubclass(errors.ConfigError, ValueError) and issubclass(
        errors.ModelFolderError, FileNotFoundError
    )
    assert issubclass(errors.VLLMNotInstalledError, ImportError)
    for cls in ERRORS:
        assert cls.exit_code == 2 and 400 <= cls.http_status < 600, cls


def test_the_old_import_paths_name_the_same_classes() -> None:
    from services.runs import ConfigError
    from shared.engine import EngineStartError as from_engine
    from shared.prompts import PromptFileError
    from workers.engines.vllm import VLLMNotInstalledError
    from workers.stages import ConfigChangedError as from_stages

    assert ConfigError is errors.ConfigError and PromptFileError is errors.PromptFileError
    assert from_engine is EngineStartError and from_stages is ConfigChangedError
    assert VLLMNotInstalledError is errors.VLLMNotInstalledError


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ConfigChangedError("shard 0 was produced with settings abc; start a new run"), 409),
        (EngineStartError("vLLM could not start: lower vllm.kv_cache_gb"), 503),
        (errors.ConfigError("search.branching: must be >= 1"), 400),
    ],
)
def test_the_api_answers_a_spar_error_with_its_status_and_message(error: SparError, status: int) -> None:
    from services.api import Settings, create_app
    from services.api.deps import get_scheduler

    app = create_app(Settings(api_token="t" * 32, scheduler=False))

    def failing():
        raise error

    app.dependency_overrides[get_scheduler] = failing
    with TestClient(app) as client:
        r = client.get("/v1/runs", headers={"Authorization": "Bearer " + "t" * 32})
    assert r.status_code == status and r.json() == {"detail": str(error)}


def test_the_cli_prints_a_spar_error_as_one_line(tmp_path, capsys) -> None:
    from services.cli import main

    config = tmp_path / "bad.yaml"
    config.write_text(
        "prompts: p.jsonl\nactor: {model: tiny}\nrefiner: {model: tiny}\nsearch: {branching: 0}\n"
    )
    assert main(["run", str(config), "--runs-dir", str(tmp_path / "runs")]) == 2
    out = capsys.readouterr()
    assert "search.branching" in out.out + out.err and "Traceback" not in out.out + out.err


def test_an_out_of_range_engine_flag_is_one_line_naming_the_flag(tmp_path, capsys) -> None:
    from services.cli import main

    code = main(["eval", "ifeval", "--model", str(tmp_path), "--engine", "vllm", "--kv-cache-gb", "100000"])
    err = capsys.readouterr()
    assert code == 2 and "--kv-cache-gb" in err.out + err.err and "Traceback" not in err.out + err.err
