"""The vLLM adapter on the real engine (vLLM's CPU build) with SmolLM2-135M-Instruct: a real chat
template (with its default system turn), a 49k vocabulary and 30 layers.

One ``VLLMEngine`` for the module (startup 25-40 s); a 0.5 GiB KV cache holds about 22k tokens of
SmolLM2 in bfloat16, ten full 2048-token sequences. Over-long prompts are checked against a
``max_model_len`` of 1024 so they stay cheap to build.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import VLLMEngineConfig
from shared.engine import GenerationRequest, MeteredEngine

try:  # the prepared-folder fixture lives with the SmolLM2 tests (one folder per machine cache)
    from test_smollm2 import smollm2_dir  # noqa: F401
except ModuleNotFoundError:  # pragma: no cover
    from tests.test_smollm2 import smollm2_dir  # noqa: F401

CONTEXT = 1024


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def engine(smollm2_dir: Path) -> Iterator[object]:  # noqa: F811
    from workers.engines.vllm import VLLMEngine

    built = VLLMEngine(
        smollm2_dir, VLLMEngineConfig(device="cpu", kv_cache_gb=0.5, max_model_len=CONTEXT), seed=0
    )
    yield built
    built.close()


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):  # noqa: ANN201, F811
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def _prompt_len(tokenizer, request: GenerationRequest) -> int:  # noqa: ANN001
    text = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_mixed_batch_with_counts_against_the_tokenizer(engine, tokenizer) -> None:  # noqa: ANN001
    requests = [
        GenerationRequest(
            messages=_user("What is the capital of France?"), temperature=0.0, max_new_tokens=20
        ),
        GenerationRequest(
            messages=_user("Name three fruits."), n=3, temperature=0.8, max_new_tokens=24, seed=4
        ),
        GenerationRequest(
            messages=[{"role": "system", "content": "Answer in one line."}, _user("Count to ten.")[0]],
            n=2,
            temperature=0.6,
            max_new_tokens=40,
            seed=5,
            stop=[","],
        ),
    ]
    before = engine.stats.snapshot()
    out = engine.generate(requests)
    delta = engine.stats.minus(before)
    assert [len(t) for t in out] == [1, 3, 2]
    assert out[0][0]  # (bfloat16 SmolLM2 from a Q4 GGUF does not reliably say "Paris" here)
    assert not any("," in text for text in out[2])
    assert delta.prompt_tokens == sum(_prompt_len(tokenizer, r) for r in requests)
    assert 0 < delta.generated_tokens <= sum(r.n * r.max_new_tokens for r in requests)
    # Re-tokenizing a sampled text need not give back the sampled ids (BPE merges them canonically),
    # so the texts' token counts match the engine's up to a couple of tokens per completion (its
    # end token, the stop string, a merge).
    retokenized = sum(
        len(tokenizer(t, add_special_tokens=False)["input_ids"]) for texts in out for t in texts
    )
    assert abs(delta.generated_tokens - retokenized) <= 3 * delta.completions, (delta, retokenized)
    for request in requests:
        before = engine.stats.snapshot()
        engine.generate([request])  # alone: its own count, within n * max_new_tokens
        assert 0 < engine.stats.minus(before).generated_tokens <= request.n * request.max_new_tokens


def test_greedy_n_and_batch_invariant_seeds(engine) -> None:  # noqa: ANN001
    greedy = GenerationRequest(messages=_user("Describe the sea."), n=2, temperature=0.0, max_new_tokens=16)
    seeded = GenerationRequest(
        messages=_user("Write a haiku."), n=2, temperature=1.0, max_new_tokens=24, seed=11
    )
    other = GenerationRequest(messages=_user("Say hello."), n=3, temperature=0.9, max_new_tokens=12, seed=1)
    greedy_out, seeded_alone = engine.generate([greedy, seeded])
    assert greedy_out[0] and greedy_out[0] == greedy_out[1]
    seeded_in_batch = engine.generate([other, other.model_copy(update={"seed": 2}), seeded])[2]
    assert seeded_in_batch == seeded_alone


def test_overlong_prompt_does_not_fail_the_batch(engine, tokenizer) -> None:  # noqa: ANN001
    huge = GenerationRequest(messages=_user("apple " * 1100), max_new_tokens=8)
    assert _prompt_len(tokenizer, huge) > CONTEXT
    near = GenerationRequest(messages=_user("apple " * 980), max_new_tokens=200, temperature=0.0)
    assert _prompt_len(tokenizer, near) + 200 > CONTEXT > _prompt_len(tokenizer, near)
    ok = GenerationRequest(messages=_user("Say hi."), max_new_tokens=8, temperature=0.0)
    metered = MeteredEngine(engine)
    out = metered.generate([huge, near, ok])
    assert out[0] == [""] and out[1] == [""] and out[2][0]
    assert metered.stats.overlong_skipped == 2


def test_prompt_ids_are_what_llm_chat_renders(engine) -> None:  # noqa: ANN001
    """The engine tokenizes chats itself (to count them first): the same ids as vLLM's own chat path."""
    from vllm import SamplingParams

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    (output,) = engine.llm.chat([messages], sampling_params=SamplingParams(max_tokens=1), use_tqdm=False)
    assert engine.prompt_token_ids(GenerationRequest(messages=messages)) == list(output.prompt_token_ids)
    plain = _user("What is the capital of France?")
    (output,) = engine.llm.chat([plain], sampling_params=SamplingParams(max_tokens=1), use_tqdm=False)
    assert engine.prompt_token_ids(GenerationRequest(messages=plain)) == list(output.prompt_token_ids)
