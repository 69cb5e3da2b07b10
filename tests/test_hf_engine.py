"""The transformers engine against the tiny imprinted model: shape, order, seeding, stops, counters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from shared.config import HFEngineConfig
from shared.engine import Engine, EngineStats, GenerationRequest, MeteredEngine
from shared.templates import extract_refined, judge_messages, refine_conversation
from workers.engines.hf import HFEngine, batch_seed, row_seed

VERDICT = re.compile(r"Final Judgement[^\n]*?:\s*(Yes|No)\b")


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> HFEngine:
    """Loaded through the public constructor, so the folder loading path is exercised too."""
    return HFEngine(tiny_model_path, HFEngineConfig(batch_size=4))


def _with_batch_size(engine: HFEngine, batch_size: int) -> HFEngine:
    """Another engine sharing the loaded weights, with a different batch size and fresh counters."""
    config = HFEngineConfig(batch_size=batch_size)
    return HFEngine.from_pretrained_objects(engine.model, engine.tokenizer, config)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _mixed_requests(**overrides: object) -> list[GenerationRequest]:
    """Requests of different kinds, prompt lengths and n, for the shape and order tests."""
    chats = [
        _user("Describe rain."),
        judge_messages("Write a poem about the sea in exactly 3 lines.", "The sea is blue. It is big."),
        _user("Write a story about a small robot in two sentences, all in lowercase letters."),
        refine_conversation(
            "Describe the moon without commas.",
            "The moon, bright and pale, rose.",
            "Step-by-step verification: The Output contains commas.\n"
            "Final Judgement (if the Output accurately follows the Prompt): No",
        ),
        _user("Give three facts about bees."),
    ]
    settings: dict[str, object] = {"max_new_tokens": 24, "temperature": 0.0} | overrides
    return [
        GenerationRequest(messages=chat, n=n, seed=10 + i, **settings)  # type: ignore[arg-type]
        for i, (chat, n) in enumerate(zip(chats, [1, 3, 2, 1, 2], strict=True))
    ]


def test_is_an_engine(engine: HFEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.generate([]) == []


def test_shape_and_order_with_mixed_n_and_lengths(engine: HFEngine) -> None:
    """Greedy batched results equal each request run alone: rows went back to the right request."""
    requests = _mixed_requests()
    small_batches = _with_batch_size(engine, 2)  # 9 rows in batches of 2
    outputs = small_batches.generate(requests)
    assert [len(o) for o in outputs] == [r.n for r in requests]
    for request, completions in zip(requests, outputs, strict=True):
        alone = engine.generate([request.model_copy(update={"n": 1})])[0][0]
        assert completions == [alone] * request.n
    # Each kind of chat got its own kind of answer (the imprint makes them distinguishable).
    assert outputs[1][0].startswith("Step-by-step verification")
    assert outputs[3][0].startswith("Reflection")


def test_different_sampling_settings_in_one_call(engine: HFEngine) -> None:
    """Groups with different settings are generated separately and still land in request order."""
    chat = judge_messages("Write a haiku about winter.", "Snow falls. Cold air. Quiet night.")
    requests = [
        GenerationRequest(messages=chat, n=2, temperature=0.0, max_new_tokens=3),
        GenerationRequest(messages=_user("Describe coffee."), n=3, max_new_tokens=30, seed=1),
        GenerationRequest(messages=chat, n=1, temperature=0.0, max_new_tokens=30),
        GenerationRequest(messages=chat, n=2, temperature=1.0, top_p=0.5, max_new_tokens=8, seed=2),
    ]
    outputs = _with_batch_size(engine, 2).generate(requests)
    assert [len(o) for o in outputs] == [2, 3, 1, 2]
    assert len(engine.tokenizer(outputs[0][0], add_special_tokens=False)["input_ids"]) <= 3
    assert outputs[2][0].startswith(outputs[0][0])  # greedy: the 3-token answer is a prefix
    assert len(outputs[2][0]) > len(outputs[0][0])
    assert all(len(engine.tokenizer(t, add_special_tokens=False)["input_ids"]) <= 8 for t in outputs[3])


def test_metered_engine_accepts_the_shape(engine: HFEngine) -> None:
    metered = MeteredEngine(_with_batch_size(engine, 3))
    requests = _mixed_requests(max_new_tokens=8, temperature=0.7)
    metered.generate(requests)
    assert metered.stats.completions == sum(r.n for r in requests)
    assert metered.stats.generated_tokens > 0


def test_seeded_sampling_is_reproducible(engine: HFEngine) -> None:
    requests = _mixed_requests(temperature=1.0, max_new_tokens=32)
    first = engine.generate(requests)
    assert engine.generate(requests) == first
    # A new engine on the same weights (as in a later run) samples the same texts.
    assert _with_batch_size(engine, engine.config.batch_size).generate(requests) == first


def test_seeded_batches_leave_the_global_rng_alone(engine: HFEngine) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    engine.generate(_mixed_requests(temperature=1.0, max_new_tokens=4))
    assert torch.equal(torch.rand(3), expected)


def test_different_seeds_give_different_samples(engine: HFEngine) -> None:
    chat = _user("Write a story about a lighthouse.")
    a = engine.generate([GenerationRequest(messages=chat, n=4, temperature=1.0, max_new_tokens=32, seed=1)])
    b = engine.generate([GenerationRequest(messages=chat, n=4, temperature=1.0, max_new_tokens=32, seed=2)])
    assert a != b
    assert len(set(a[0])) > 1  # the n copies of one request are sampled differently too


def test_greedy_is_deterministic(engine: HFEngine) -> None:
    chat = judge_messages("Describe autumn in fewer than 20 words.", "Leaves fall and the air turns cold.")
    request = GenerationRequest(messages=chat, n=3, temperature=0.0, max_new_tokens=40)
    first = engine.generate([request])
    assert len(set(first[0])) == 1
    assert engine.generate([request]) == first
    assert engine.generate([request.model_copy(update={"seed": 99})]) == first  # seeds do not matter


def test_stop_strings_cut_the_text(engine: HFEngine) -> None:
    """With a stop string, each completion is the unstopped one cut before the stop string."""
    chat = judge_messages("Write a poem about rain in 4 lines.", "Rain falls. Rain sings.")
    plain = GenerationRequest(messages=chat, n=8, temperature=0.7, max_new_tokens=60, seed=5)
    stopped = plain.model_copy(update={"stop": ["Final"]})
    full = engine.generate([plain])[0]
    cut = engine.generate([stopped])[0]
    assert any("Final" in text for text in full), "the imprinted judge should write 'Final Judgement'"
    assert not any("Final" in text for text in cut)
    assert cut == [text.split("Final")[0] for text in full]


def test_stats_count_tokens(engine: HFEngine) -> None:
    fresh = _with_batch_size(engine, 4)
    requests = _mixed_requests(max_new_tokens=10, temperature=0.7)
    fresh.generate(requests)
    prompt_lengths = [len(fresh._prompt_ids(r)) for r in requests]
    assert fresh.stats.prompt_tokens == sum(n * r.n for n, r in zip(prompt_lengths, requests, strict=True))
    rows = sum(r.n for r in requests)
    assert 0 < fresh.stats.generated_tokens <= rows * 10
    assert (fresh.stats.calls, fresh.stats.requests, fresh.stats.completions) == (1, len(requests), rows)
    before = fresh.stats.snapshot()
    fresh.generate(requests[:1])
    delta = fresh.stats.minus(before)
    assert isinstance(delta, EngineStats)
    assert delta.prompt_tokens == prompt_lengths[0] * requests[0].n
    assert delta.generated_tokens > 0


def test_progress_callback_reaches_total(engine: HFEngine) -> None:
    fresh = _with_batch_size(engine, 2)
    calls: list[tuple[int, int]] = []
    fresh.progress_callback = lambda done, total: calls.append((done, total))
    requests = _mixed_requests(max_new_tokens=4)
    fresh.generate(requests)
    total = sum(r.n for r in requests)
    assert calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert all(t == total for _, t in calls)
    assert len(calls) >= total // 2


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model.*does not exist"):
        HFEngine(missing)
    with pytest.raises(FileNotFoundError, match="config.json"):
        HFEngine(tmp_path)


def test_imprinted_model_speaks_the_formats(engine: HFEngine) -> None:
    """The pipeline can parse the tiny model: verdicts in judge replies, markers in refine replies."""
    judge = GenerationRequest(
        messages=judge_messages("Write a poem about the moon in exactly 3 lines.", "The moon is bright."),
        n=8,
        temperature=0.7,
        max_new_tokens=80,
        seed=3,
    )
    refine = GenerationRequest(
        messages=refine_conversation(
            "Describe a garden in lowercase letters.",
            "The Garden is GREEN.",
            "Step-by-step verification: The Output uses capital letters, which the Prompt forbids.\n"
            "Final Judgement (if the Output accurately follows the Prompt): No",
        ),
        n=8,
        temperature=0.7,
        max_new_tokens=80,
        seed=4,
    )
    judgments, refinements = engine.generate([judge, refine])
    assert any(VERDICT.search(text) for text in judgments), judgments
    assert any(extract_refined(text) for text in refinements), refinements


def test_seed_derivation_is_stable() -> None:
    assert row_seed(7, 0) == row_seed(7, 0)
    assert row_seed(7, 0) != row_seed(7, 1) != row_seed(8, 1)
    assert 0 <= row_seed(123, 4) < 2**63
    assert batch_seed([None, None]) is None
    assert batch_seed([1, None]) == batch_seed([1, None]) != batch_seed([None, 1])


# --- over-long requests ------------------------------------------------------------------------


def _with_context(engine: HFEngine, context: int, overlong: str) -> HFEngine:
    """An engine over the same weights whose model context is ``context`` tokens."""
    fresh = HFEngine.from_pretrained_objects(
        engine.model,
        engine.tokenizer,
        HFEngineConfig(batch_size=4, overlong=overlong),  # type: ignore[arg-type]
    )
    fresh.max_positions = context
    return fresh


def test_overlong_request_is_skipped_and_the_batch_still_runs(engine: HFEngine) -> None:
    short, long = _user("Describe rain."), _user("Describe rain. " * 40)
    long_len = len(engine._prompt_ids(GenerationRequest(messages=long)))
    fresh = _with_context(engine, long_len + 5, "skip")
    requests = [
        GenerationRequest(messages=short, n=2, temperature=0.0, max_new_tokens=8),
        GenerationRequest(messages=long, n=3, temperature=0.7, max_new_tokens=6, seed=1),  # 6 > 5
    ]
    metered = MeteredEngine(fresh)
    out = metered.generate(requests)
    assert out[1] == ["", "", ""]
    assert all(text for text in out[0])
    assert (fresh.stats.overlong_skipped, fresh.stats.overlong_truncated) == (1, 0)
    assert metered.stats.as_dict()["overlong_skipped"] == 1  # carried into the shard's engine counts
    assert fresh.stats.completions == 5
    short_len = len(engine._prompt_ids(requests[0]))
    assert fresh.stats.prompt_tokens == 2 * short_len  # the skipped request cost nothing


def test_overlong_request_is_truncated_to_the_room_left(engine: HFEngine) -> None:
    long = _user("Describe rain. " * 40)
    long_len = len(engine._prompt_ids(GenerationRequest(messages=long)))
    fresh = _with_context(engine, long_len + 5, "truncate")
    # Sampling at a high temperature from the random-ish tiny model rarely ends before 5 tokens.
    request = GenerationRequest(messages=long, n=4, temperature=1.5, max_new_tokens=50, seed=2)
    out = fresh.generate([request])
    assert len(out[0]) == 4 and any(out[0])
    assert (fresh.stats.overlong_skipped, fresh.stats.overlong_truncated) == (0, 1)
    assert 0 < fresh.stats.generated_tokens <= 4 * 5
    # the prompt alone over the context: skipped even under truncate
    tight = _with_context(engine, long_len - 1, "truncate")
    assert tight.generate([request]) == [["", "", "", ""]]
    assert (tight.stats.overlong_skipped, tight.stats.overlong_truncated) == (1, 0)


def test_prompt_beyond_the_real_context_does_not_fail_the_call(engine: HFEngine) -> None:
    huge = _user("rain " * (engine.max_positions or 2048))
    fresh = _with_batch_size(engine, 4)
    out = fresh.generate(
        [
            GenerationRequest(messages=huge, max_new_tokens=4),
            GenerationRequest(messages=_user("Hi."), max_new_tokens=4),
        ]
    )
    assert out[0] == [""] and fresh.stats.overlong_skipped == 1
