"""The vLLM adapter against a fake ``vllm`` package: exact translation, ordering, LoRA, stats.

vLLM cannot run on the CPU machines, so these tests pin down what the adapter sends to
``vllm.LLM`` and ``LLM.chat`` and how it reads the results; the fake mirrors vLLM's signatures.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shared.config import VLLMEngineConfig
from shared.engine import Engine, GenerationRequest, MeteredEngine

try:  # tests/ is a rootdir folder, not a package; both layouts are supported
    from fake_vllm import FakeVLLM, LoRARequest, SamplingParams, install_fake_vllm
except ModuleNotFoundError:  # pragma: no cover
    from tests.fake_vllm import FakeVLLM, LoRARequest, SamplingParams, install_fake_vllm

if TYPE_CHECKING:
    from fake_vllm import RequestOutput

    from workers.engines.vllm import VLLMEngine

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeVLLM:
    return install_fake_vllm(monkeypatch)


def _engine(config: VLLMEngineConfig | None = None, seed: int = 0) -> VLLMEngine:
    from workers.engines.vllm import VLLMEngine

    return VLLMEngine("/models/actor", config, seed=seed)


def _chat(text: str, system: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": text}]


def test_engine_satisfies_the_protocol(fake: FakeVLLM) -> None:
    assert isinstance(_engine(), Engine)


def test_constructor_passes_the_configured_settings(fake: FakeVLLM) -> None:
    config = VLLMEngineConfig(
        tensor_parallel_size=2,
        gpu_memory_utilization=0.75,
        max_model_len=4096,
        dtype="bfloat16",
        trust_remote_code=True,
        enforce_eager=True,
    )
    _engine(config, seed=42)
    llm = fake.llm
    assert llm.model == "/models/actor"
    assert llm.kwargs == {
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.75,
        "max_model_len": 4096,
        "dtype": "bfloat16",
        "enable_prefix_caching": True,
        "trust_remote_code": True,
        "enforce_eager": True,
        "seed": 42,
        "enable_lora": False,
    }


def test_constructor_defaults_enable_prefix_caching(fake: FakeVLLM) -> None:
    from workers.engines.vllm import VLLMEngine

    VLLMEngine(Path("/models/actor"))
    kwargs = fake.llm.kwargs
    assert fake.llm.model == "/models/actor"  # a Path is passed as str
    assert kwargs["enable_prefix_caching"] is True
    assert kwargs["tensor_parallel_size"] == 1
    assert kwargs["gpu_memory_utilization"] == 0.9
    assert kwargs["max_model_len"] is None
    assert kwargs["dtype"] == "auto"
    assert kwargs["seed"] == 0
    assert "max_lora_rank" not in kwargs


def test_generate_translates_each_request_exactly(fake: FakeVLLM) -> None:
    engine = _engine()
    requests = [
        GenerationRequest(
            messages=_chat("first", system="be brief"),
            n=3,
            temperature=0.9,
            top_p=0.8,
            max_new_tokens=77,
            seed=11,
            stop=["[[end]]", "\n\n"],
        ),
        GenerationRequest(messages=_chat("second"), n=1, temperature=0.5, max_new_tokens=5),
    ]
    engine.generate(requests)

    assert len(fake.llm.calls) == 1
    call = fake.llm.calls[0]
    assert call.messages == [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"}],
        [{"role": "user", "content": "second"}],
    ]
    assert call.use_tqdm is False
    assert call.lora_request is None
    first, second = call.sampling_params
    assert isinstance(first, SamplingParams)
    assert (first.n, first.temperature, first.top_p, first.max_tokens, first.seed, first.stop) == (
        3,
        0.9,
        0.8,
        77,
        11,
        ["[[end]]", "\n\n"],
    )
    assert (second.n, second.temperature, second.top_p, second.max_tokens, second.seed, second.stop) == (
        1,
        0.5,
        1.0,
        5,
        None,
        [],
    )


def test_outputs_map_back_in_request_order_with_n_each(fake: FakeVLLM) -> None:
    engine = _engine()
    requests = [
        GenerationRequest(messages=_chat("a"), n=2),
        GenerationRequest(messages=_chat("b"), n=1),
        GenerationRequest(messages=_chat("c"), n=4),
    ]
    assert engine.generate(requests) == [
        ["a#0", "a#1"],
        ["b#0"],
        ["c#0", "c#1", "c#2", "c#3"],
    ]


def test_completions_are_ordered_by_their_index(fake: FakeVLLM) -> None:
    def shuffle(outputs: list[RequestOutput]) -> list[RequestOutput]:
        for output in outputs:
            output.outputs.reverse()
        return outputs

    fake.tamper = shuffle
    assert _engine().generate([GenerationRequest(messages=_chat("x"), n=3)]) == [["x#0", "x#1", "x#2"]]


def test_one_chat_call_per_generate_and_none_for_an_empty_batch(fake: FakeVLLM) -> None:
    engine = _engine()
    assert engine.generate([]) == []
    assert fake.llm.calls == []
    for _ in range(3):
        engine.generate([GenerationRequest(messages=_chat(str(i))) for i in range(5)])
    assert len(fake.llm.calls) == 3
    assert all(len(call.messages) == 5 for call in fake.llm.calls)


def test_greedy_request_with_n_above_one_is_generated_once(fake: FakeVLLM) -> None:
    # vLLM rejects n > 1 with temperature 0; greedy decoding would repeat one text anyway.
    engine = _engine()
    out = engine.generate([GenerationRequest(messages=_chat("g"), n=3, temperature=0.0)])
    assert out == [["g#0", "g#0", "g#0"]]
    assert fake.llm.calls[0].sampling_params[0].n == 1
    assert engine.stats.completions == 3


def test_wrong_number_of_outputs_is_a_clear_error(fake: FakeVLLM) -> None:
    engine = _engine()
    fake.tamper = lambda outputs: outputs[:-1]
    with pytest.raises(RuntimeError, match="returned 1 outputs for a batch of 2 requests"):
        engine.generate([GenerationRequest(messages=_chat("a")), GenerationRequest(messages=_chat("b"))])


def test_wrong_number_of_completions_is_a_clear_error(fake: FakeVLLM) -> None:
    engine = _engine()

    def drop_one(outputs: list[RequestOutput]) -> list[RequestOutput]:
        outputs[1].outputs.pop()
        return outputs

    fake.tamper = drop_one
    with pytest.raises(RuntimeError, match=r"1 completions for request 1 \(asked for n=2\)"):
        engine.generate(
            [GenerationRequest(messages=_chat("a"), n=2), GenerationRequest(messages=_chat("b"), n=2)]
        )


def test_stats_count_calls_requests_completions_and_tokens(fake: FakeVLLM) -> None:
    fake.responder = lambda conversation, params, index: "one two three"
    engine = _engine()
    requests = [
        GenerationRequest(messages=_chat("hello there"), n=2),
        GenerationRequest(messages=_chat("hi"), n=1),
    ]
    engine.generate(requests)
    engine.generate(requests[:1])
    # The fake reports len(prompt.split()) + 3 prompt tokens and one token per word generated.
    prompt_a = len("<user>hello there".split()) + 3
    prompt_b = len("<user>hi".split()) + 3
    assert engine.stats.as_dict() == {
        "calls": 2,
        "requests": 3,
        "completions": 5,
        "prompt_tokens": 2 * prompt_a + prompt_b,
        "generated_tokens": 5 * 3,
    }


def test_metered_engine_picks_up_token_counts(fake: FakeVLLM) -> None:
    fake.responder = lambda conversation, params, index: "four words of text"
    metered = MeteredEngine(_engine())
    metered.generate([GenerationRequest(messages=_chat("a b c"), n=2)])
    assert metered.stats.completions == 2
    assert metered.stats.prompt_tokens > 0
    assert metered.stats.generated_tokens == 2 * 4


def test_lora_adapter_enables_lora_and_is_sent_with_every_call(fake: FakeVLLM) -> None:
    config = VLLMEngineConfig(lora_adapter="/adapters/v1", max_lora_rank=32, max_loras=2)
    engine = _engine(config)
    kwargs = fake.llm.kwargs
    assert (kwargs["enable_lora"], kwargs["max_lora_rank"], kwargs["max_loras"]) == (True, 32, 2)

    engine.generate([GenerationRequest(messages=_chat("a"))])
    engine.generate([GenerationRequest(messages=_chat("b"))])
    first, second = (call.lora_request for call in fake.llm.calls)
    assert isinstance(first, LoRARequest)
    assert first.lora_path == "/adapters/v1"
    assert first.lora_int_id >= 1
    assert second == first


def test_switch_lora_changes_the_adapter_with_a_new_id(fake: FakeVLLM) -> None:
    engine = _engine(VLLMEngineConfig(lora_adapter="/adapters/v1"))
    engine.generate([GenerationRequest(messages=_chat("a"))])
    engine.switch_lora("/adapters/v2")
    engine.generate([GenerationRequest(messages=_chat("b"))])
    engine.switch_lora("/adapters/v2")  # retrained in place: a new id makes vLLM reload it
    engine.generate([GenerationRequest(messages=_chat("c"))])
    engine.switch_lora(None)
    engine.generate([GenerationRequest(messages=_chat("d"))])

    assert len(fake.llms) == 1  # the same engine throughout
    v1, v2, v2_again, base = (call.lora_request for call in fake.llm.calls)
    assert (v1.lora_path, v2.lora_path, v2_again.lora_path) == (
        "/adapters/v1",
        "/adapters/v2",
        "/adapters/v2",
    )
    assert len({v1.lora_int_id, v2.lora_int_id, v2_again.lora_int_id}) == 3
    assert len({v1.lora_name, v2.lora_name, v2_again.lora_name}) == 3
    assert base is None


def test_switch_lora_without_lora_support_is_a_clear_error(fake: FakeVLLM) -> None:
    engine = _engine()
    with pytest.raises(RuntimeError, match="without LoRA support"):
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
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, even on a GPU machine
    from workers.engines.vllm import VLLMEngine, VLLMNotInstalledError

    with pytest.raises(VLLMNotInstalledError) as caught:
        VLLMEngine("/models/actor")
    assert isinstance(caught.value, ImportError)
    message = str(caught.value)
    assert "GPU inference image" in message
    assert "pip install 'spar[vllm]'" in message
    assert "CUDA" in message
