"""shared/runtime/settings.py: the one place SPAR_* variables are read, typed and defaulted."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import WorkerSettingsError
from shared.runtime.settings import HF_ENVIRONMENT, apply_hf_environment, settings


def test_defaults_and_derived_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("SPAR_RUNS_DIR", "SPAR_DATA_ROOT", "SPAR_REDIS_URL", "SPAR_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPAR_DATA_ROOT", str(tmp_path))
    s = settings()
    assert s.runs_root == (tmp_path / "runs").resolve()
    assert s.redis_url == "redis://127.0.0.1:6379/0" and s.worker_redis_timeout == 30.0
    assert s.cache_root == Path.home() / ".cache" / "spar"
    monkeypatch.setenv("SPAR_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert settings().runs_root == (tmp_path / "elsewhere").resolve()  # read at call time, not import


def test_the_api_worker_and_queue_read_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.api import Settings
    from shared.runtime.queue import redis_url

    monkeypatch.setenv("SPAR_REDIS_URL", "redis://:secret@queue:6380/2")
    assert redis_url() == Settings().redis_url == "redis://:secret@queue:6380/2"


@pytest.mark.parametrize(
    ("name", "value"),
    [("SPAR_WORKER_REDIS_TIMEOUT", "-1"), ("SPAR_ENGINE_ISOLATION", "thread"), ("SPAR_RETRIES", "many")],
)
def test_an_invalid_value_is_an_error_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(WorkerSettingsError, match=name):
        settings()


def test_hf_environment_is_applied_without_overriding(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HF_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    apply_hf_environment()
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TOKENIZERS_PARALLELISM"] == "true"


@pytest.mark.parametrize("cache", [None, "~/elsewhere/spar-cache", "/srv/spar"])
def test_the_nltk_folder_follows_the_settings_cache(
    monkeypatch: pytest.MonkeyPatch, cache: str | None
) -> None:
    """The IFEval scorer (pure core) reads SPAR_CACHE_DIR itself; it must agree with the settings."""
    from shared.evaluation.punkt import default_nltk_data_dir

    if cache is None:
        monkeypatch.delenv("SPAR_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("SPAR_CACHE_DIR", cache)
    assert default_nltk_data_dir() == settings().cache_root / "nltk_data"
