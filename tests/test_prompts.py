"""Prompt files: every malformed line is reported by number; nothing is silently dropped."""

import json

import pytest

from shared.prompts import PromptFileError, parse_prompt_lines


def test_records_carry_ids_and_metadata() -> None:
    lines = [
        json.dumps({"prompt": "Write a haiku.", "id": 7, "category": "poem"}),
        "",
        json.dumps({"prompt": "Hi"}),
    ]
    records = parse_prompt_lines(lines)
    assert [r.id for r in records] == ["7", "line-3"]
    assert records[0].metadata == {"category": "poem"}


def test_all_malformed_lines_are_reported_by_number() -> None:
    lines = [
        json.dumps({"prompt": "ok"}),
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"text": "no prompt field"}),
        json.dumps({"prompt": "   "}),
        json.dumps({"prompt": "bad id", "id": [1]}),
        json.dumps({"prompt": "dup", "id": "a"}),
        json.dumps({"prompt": "dup again", "id": "a"}),
    ]
    with pytest.raises(PromptFileError) as info:
        parse_prompt_lines(lines, source="p.jsonl")
    assert [n for n, _ in info.value.problems] == [2, 3, 4, 5, 6, 8]
    message = str(info.value)
    assert "p.jsonl" in message and "line 2: not valid JSON" in message
    assert "duplicate id 'a' (first on line 7)" in message


def test_an_empty_file_is_an_error() -> None:
    with pytest.raises(PromptFileError, match="no prompts"):
        parse_prompt_lines(["", "  "])
