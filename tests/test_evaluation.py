"""Offline evaluation: the Punkt data NLTK needs, IFEval scoring with the package's checker, the
batched IFEval run on the tiny model, pairwise judge accuracy with a scripted refiner, and the CLI."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripted import FINAL, ScriptedEngine, yes

from shared.config import HFEngineConfig
from shared.engine import MeteredEngine
from shared.evaluation import punkt as spar_punkt
from shared.evaluation.ifeval import N_PROMPTS, evaluate_ifeval, load_ifeval_prompts, score_responses
from shared.evaluation.judge_eval import JudgeDataError, PairItem, evaluate_judge, parse_pairwise


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the Punkt files the checker writes out of the user's cache."""
    cache = tmp_path_factory.mktemp("spar-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPAR_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="module")
def items_by_key() -> dict[int, dict]:
    return {item["key"]: item for item in load_ifeval_prompts()}


# --- Punkt -----------------------------------------------------------------------------------


def test_punkt_files_written_and_nltk_tokenizes_offline(tmp_path: Path, monkeypatch) -> None:
    import nltk
    import punkt as package
    from nltk.tokenize.punkt import PunktTokenizer

    root = spar_punkt.ensure_punkt(tmp_path / "nltk_data")
    folder = root / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(spar_punkt.FILES)
    assert nltk.data.path[0] == str(root)

    # NLTK sees ONLY our folder: no download, no other data directory can help.
    monkeypatch.setattr(nltk.data, "path", [str(root)])
    tokenizer = PunktTokenizer("english")
    bundled = package.load_model("english")
    assert tokenizer._params.abbrev_types == set(bundled.abbrev_types)
    assert tokenizer._params.collocations == set(bundled.collocations)
    assert tokenizer._params.sent_starters == set(bundled.sent_starters)
    assert dict(tokenizer._params.ortho_context) == dict(bundled.ortho_context)

    text = "Dr. Jones met Mr. Smith at 5 p.m. on Monday. The U.S. team won. Did it rain?"
    assert tokenizer.tokenize(text) == [
        "Dr. Jones met Mr. Smith at 5 p.m. on Monday.",
        "The U.S. team won.",
        "Did it rain?",
    ]
    assert nltk.word_tokenize("HELLO there. BYE.") == ["HELLO", "there", ".", "BYE", "."]

    # Idempotent: a second call keeps the files (same mtime) and the path entry is not duplicated.
    before = (folder / "ortho_context.tab").stat().st_mtime_ns
    assert spar_punkt.ensure_punkt(tmp_path / "nltk_data") == root
    assert (folder / "ortho_context.tab").stat().st_mtime_ns == before
    assert nltk.data.path.count(str(root)) == 1


# --- IFEval scoring ---------------------------------------------------------------------------


def test_all_prompts_load_with_known_instructions() -> None:
    from eval_framework.tasks.ifeval import INSTRUCTION_DICT

    items = load_ifeval_prompts()
    assert len(items) == N_PROMPTS == 541
    assert len({item["key"] for item in items}) == 541
    for item in items:
        assert item["prompt"].strip()
        assert len(item["instruction_id_list"]) == len(item["kwargs"]) >= 1
        assert all(i in INSTRUCTION_DICT for i in item["instruction_id_list"])
    assert [i["key"] for i in load_ifeval_prompts(limit=3)] == [i["key"] for i in items[:3]]


def test_sentence_count_uses_punkt(items_by_key: dict[int, dict]) -> None:
    item = items_by_key[3739]  # "less than 3 sentences"
    assert item["instruction_id_list"] == ["length_constraints:number_sentences"]
    assert item["kwargs"] == [{"relation": "less than", "num_sentences": 3}]
    # Two sentences for Punkt (Dr., Mr., p.m. are abbreviations); a naive split on "." finds six.
    satisfies = "Dr. Jones and Mr. Smith call it the green-eyed monster at 5 p.m. every day. It is jealousy."
    violates = "It is jealousy. Shakespeare named it. People still use the name."
    result = score_responses([item, item], [satisfies, violates])
    assert [r["strict"] for r in result["records"]] == [[True], [False]]
    assert result["prompt_strict"] == 0.5


def test_scores_of_hand_written_responses(items_by_key: dict[int, dict]) -> None:
    cases = [
        (1001, "Day one: visit Kyoto and its temples. Day two: rest by the sea."),  # no comma: pass
        (1162, "What has a beak, wings and a future to read? A bird of omen."),  # comma: fail
        (219, 'Sure! Here it is:\n"Kareena Kapoor is a good actor."'),  # quotes only after line 1
        (1000, "No commas here. *Youth* then *Count* then *Regent* and that is all."),  # < 300 words
        (2010, '"IBM\'s 1956 chess program was a landmark."'),  # wrapped in quotes: pass
    ]
    items = [items_by_key[key] for key, _ in cases]
    result = score_responses(items, [response for _, response in cases])

    assert [r["strict"] for r in result["records"]] == [[True], [False], [False], [True, True, False], [True]]
    assert [r["loose"] for r in result["records"]] == [[True], [False], [True], [True, True, False], [True]]
    assert (result["n_prompts"], result["n_instructions"]) == (5, 7)
    assert result["prompt_strict"] == pytest.approx(2 / 5)
    assert result["prompt_loose"] == pytest.approx(3 / 5)
    assert result["instruction_strict"] == pytest.approx(4 / 7)
    assert result["instruction_loose"] == pytest.approx(5 / 7)
    assert result["average"] == pytest.approx((2 / 5 + 3 / 5 + 4 / 7 + 5 / 7) / 4)
    assert result["per_instruction"]["punctuation:no_comma"] == {"n": 3, "strict": 2 / 3, "loose": 2 / 3}
    assert result["per_instruction"]["startend:quotation"] == {"n": 2, "strict": 0.5, "loose": 1.0}
    assert result["per_category"]["length_constraints"] == {"n": 1, "strict": 0.0, "loose": 0.0}
    assert set(result["per_category"]) == {
        "punctuation",
        "startend",
        "detectable_format",
        "length_constraints",
    }

    empty = score_responses([items_by_key[1001]], ["   "])  # an empty answer follows nothing
    assert empty["prompt_strict"] == empty["prompt_loose"] == 0.0
    with pytest.raises(ValueError, match="2 responses for 1 items"):
        score_responses([items_by_key[1001]], ["a", "b"])


def test_evaluate_ifeval_tiny_model_one_batched_call(tiny_model_path: Path) -> None:
    from workers.engines.hf import HFEngine

    engine = MeteredEngine(HFEngine(tiny_model_path, HFEngineConfig(batch_size=4)))
    result = evaluate_ifeval(engine, limit=4, max_new_tokens=12)
    assert (engine.stats.calls, engine.stats.requests) == (1, 4)
    assert result["n_prompts"] == 4 == len(result["responses"]) == len(result["records"])
    assert result["n_instructions"] == sum(len(i["instruction_id_list"]) for i in load_ifeval_prompts(4))
    for metric in ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose", "average"):
        assert 0.0 <= result[metric] <= 1.0
    assert result["prompt_strict"] <= result["prompt_loose"]
    assert result["prompts_per_s"] > 0


# --- judge accuracy ---------------------------------------------------------------------------


def _scripted_judge(prompt: str, response: str, index: int, _before: int) -> str:
    """Yes for GOOD, No for BAD; BROKEN makes vote 0 unreadable; SPLIT votes yes/no/unreadable."""
    if "SPLIT" in response:
        return [yes(), f"{FINAL} No", "I cannot decide."][index]
    if "BROKEN" in response and index == 0:
        return "Step-by-step verification: hmm. Final verdict: unsure"
    return yes() if "GOOD" in response else f"Step-by-step verification: missed.\n{FINAL} No"


def _items() -> list[PairItem]:
    return [
        PairItem("a", "GOOD a", "BAD a", 1),  # correct
        PairItem("b", "BAD b", "GOOD b", 2),  # correct
        PairItem("c", "BAD c", "GOOD c", 1),  # the judge prefers the wrong one
        PairItem("d", "GOOD d BROKEN", "BAD d", 1),  # correct, with one unreadable vote (2 yes)
        PairItem("e", "BAD e", "SPLIT e", 2),  # the preferred one is tied: undecided, not correct
    ]


def test_judge_accuracy_invalid_and_undecided_rates() -> None:
    engine = ScriptedEngine(judge_fn=_scripted_judge)
    result = evaluate_judge(engine, _items(), votes=3)
    assert engine.n_calls == 1 == result["engine_calls"]  # all 10 outputs in one batched call
    assert len(engine.calls[0]) == 10 and all(r.n == 3 for r in engine.calls[0])
    assert result["n"] == 5
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["invalid_rate"] == pytest.approx(2 / 30)
    assert result["undecided_rate"] == pytest.approx(1 / 10)
    assert [r["correct"] for r in result["records"]] == [True, True, False, True, False]
    assert result["records"][4]["preferred"] == "undecided"


def test_judge_that_always_says_yes_scores_zero() -> None:
    result = evaluate_judge(ScriptedEngine(judge_fn=yes), _items(), votes=5)
    assert result["accuracy"] == 0.0
    assert result["pass_rate"] == 1.0
    assert result["invalid_rate"] == result["undecided_rate"] == 0.0


def test_pairwise_file_formats_and_errors() -> None:
    rows = [{"input": "x", "output_1": "a", "output_2": "b", "label": 2}]
    as_jsonl = "\n".join(json.dumps(r) for r in rows) + "\n\n"
    assert parse_pairwise(as_jsonl) == parse_pairwise(json.dumps(rows)) == [PairItem("x", "a", "b", 2)]
    bad = "\n".join(
        [
            json.dumps({"input": "x", "output_1": "a", "output_2": "b", "label": 3}),
            "{not json",
            json.dumps({"input": "x", "output_1": "a", "label": 1}),
            json.dumps({"input": "x", "output_1": "a", "output_2": "b", "label": 1}),
        ]
    )
    with pytest.raises(JudgeDataError) as caught:
        parse_pairwise(bad, source="f.jsonl")
    assert [n for n, _ in caught.value.problems] == [1, 2, 3]


# --- CLI --------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    from services.eval_cli import add_eval_commands, run_eval_command

    parser = argparse.ArgumentParser(prog="spar")
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    return run_eval_command(parser.parse_args(argv))


def test_cli_ifeval_and_judge(tiny_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "ifeval.json"
    common = ["--model", str(tiny_model_path), "--max-new-tokens", "8", "--no-progress"]
    assert _cli(["eval", "ifeval", *common, "--limit", "2", "--batch-size", "2", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["n_prompts"] == 2 and written["benchmark"] == "ifeval"

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"input": "Say hi.", "output_1": "hi", "output_2": "bye", "label": 1}) + "\n")
    out = tmp_path / "judge.json"
    assert _cli(["eval", "judge", *common, "--data", str(data), "--votes", "2", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["n"] == 1 and 0.0 <= written["accuracy"] <= 1.0

    data.write_text('{"input": "x"}\n')
    assert _cli(["eval", "judge", *common, "--data", str(data)]) == 2  # malformed data: one clear error
    assert _cli(["eval", "ifeval", "--model", str(tmp_path / "missing")]) == 2
