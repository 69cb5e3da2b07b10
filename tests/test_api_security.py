"""API settings and pages that guard the token: token length, the path-field rule, CSP, offline /docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from services.api import Settings, create_app
from services.runs import confine
from shared.config import PATH_KEY, RunConfig
from shared.errors import ConfigError, WorkerSettingsError

TOKEN = "security-test-token-0123456789abcdef"
PATHLIKE = re.compile(r"^(?!(max|min|num)_)(\w+_)?(path|file|dir|data|prompts|model|adapter|config)$")


def sections(model: type[BaseModel]) -> list[type[BaseModel]]:
    """``model`` and every config section reachable from it."""
    found = [model]
    for info in model.model_fields.values():
        for arg in _types(info.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in found:
                found += [s for s in sections(arg) if s not in found]
    return found


def _types(annotation: object) -> list[object]:
    args = getattr(annotation, "__args__", ())
    return [annotation, *[t for a in args for t in _types(a)]]


def test_every_field_named_like_a_path_is_marked_as_one() -> None:
    """A path field added later without the mark would escape confinement: this fails first."""
    marked, unmarked = [], []
    for section in sections(RunConfig):
        for name, info in section.model_fields.items():
            nested = any(isinstance(t, type) and issubclass(t, BaseModel) for t in _types(info.annotation))
            if nested or not PATHLIKE.search(name):
                continue
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            (marked if extra.get(PATH_KEY) else unmarked).append(f"{section.__name__}.{name}")
    assert unmarked == []
    assert {
        "RunConfig.prompts",
        "ModelConfig.model",
        "VLLMEngineConfig.lora_adapter",
        "EvalConfig.judge_data",
        "InitConfig.actor_data",
        "InitConfig.refiner_data",
        "TrainCommon.accelerate_config",
    } <= {m.replace("ActorTrainConfig", "TrainCommon").replace("SftConfig", "TrainCommon") for m in marked}


def test_confine_resolves_symlinks_and_keeps_built_in_names(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "models" / "m").mkdir(parents=True)
    (root / "p.jsonl").write_text('{"prompt": "x"}\n')
    (root / "inside").symlink_to(root / "models")
    config = RunConfig.model_validate(
        {"prompts": str(root / "p.jsonl"), "actor": {"model": "tiny"}, "refiner": {"model": "inside/m"}}
    )
    out = confine(config, root)
    assert out.actor.model == "tiny" and out.refiner.model == str((root / "models" / "m").resolve())
    (root / "out").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="refiner.model"):
        confine(
            config.model_copy(update={"refiner": config.refiner.model_copy(update={"model": "out"})}), root
        )


@pytest.mark.parametrize("token", ["", "short", "x" * 31])
def test_the_api_refuses_to_start_with_a_short_token(token: str) -> None:
    with pytest.raises(WorkerSettingsError, match="SPAR_API_TOKEN"):
        create_app(Settings(api_token=token, scheduler=False))


def test_the_cli_names_the_token_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from services.cli import main

    monkeypatch.setenv("SPAR_API_TOKEN", "too-short")
    assert main(["api", "--port", "1"]) == 2
    out = capsys.readouterr()
    assert "SPAR_API_TOKEN" in out.out + out.err and "Traceback" not in out.out + out.err


@pytest.fixture()
def client() -> TestClient:
    return TestClient(create_app(Settings(api_token=TOKEN, scheduler=False)))


def test_the_dashboard_has_a_strict_csp_matching_its_inline_code(client: TestClient) -> None:
    import base64
    import hashlib

    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
    scripts = re.findall(r"<script>(.*?)</script>", r.text, re.DOTALL)
    assert len(scripts) == 1 and "<script src" not in r.text
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp
    assert not re.search(r"\son[a-z]+=|\sstyle=\"", r.text)  # no inline handlers or style attributes
    # the run report opens as a blob: page, which inherits this policy: its inline style and its one
    # script (the shared chart code) are allowed, by hash
    from services.report_html import render_html

    (report_style,) = re.findall(r"<style>(.*?)</style>", render_html([]), re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(report_style.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp.split("style-src")[1].split(";")[0]
    (report_script,) = re.findall(r"<script>(.*?)</script>", render_html([]), re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(report_script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp.split("script-src")[1].split(";")[0]
    assert "function lineChart(" in report_script and "function lineChart(" in scripts[0]  # one chart code


def test_docs_load_nothing_from_a_cdn(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", r.text)
    assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
    assert "cdn" not in r.text.lower() and "script-src 'self'" in r.headers["content-security-policy"]
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert client.get("/redoc").status_code == 404  # no offline ReDoc: off
    assert client.get("/openapi.json").json()["info"]["title"] == "spar"
