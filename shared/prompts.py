"""Instruction records and the validation of a prompts file's lines.

A prompts file is JSONL with at least a non-empty string ``prompt`` per line, an optional ``id``
(string or integer, unique) and any other fields, carried through as metadata. Every malformed line
is reported by its number and the run refuses to start: data is never silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from shared.errors import DataFileError, PromptFileError  # noqa: F401  (also importable from here)


@dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: str
    metadata: dict[str, object] = field(default_factory=dict)

    def as_record(self) -> dict[str, object]:
        return {"id": self.id, "prompt": self.prompt, "metadata": self.metadata}


def parse_prompt_lines(lines: Iterable[str] | Iterable[bytes], source: str = "prompts") -> list[PromptRecord]:
    """Validate every line; raise :class:`PromptFileError` listing all problems, or return records.

    Blank lines are allowed and skipped. Lines without an ``id`` get ``line-<number>``. Lines may
    be bytes (a file opened in binary), so that text that is not UTF-8 is reported by line number.
    """
    problems: list[tuple[int, str]] = []
    records = list(iter_prompt_lines(lines, problems))
    if problems:
        raise PromptFileError(source, problems)
    if not records:
        raise PromptFileError(source, [(0, "the file holds no prompts")])
    return records


def iter_prompt_lines(
    lines: Iterable[str] | Iterable[bytes], problems: list[tuple[int, str]]
) -> Iterator[PromptRecord]:
    """The valid records of ``lines``, one at a time; each malformed line is appended to ``problems``.

    A generator, so a caller can write records out as they come (``services/runs.py`` shards a
    million-line file without holding it: only the ids seen are kept, to refuse duplicates).
    The caller raises when ``problems`` is not empty at the end.
    """
    first_line_of_id: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):  # read in binary: a non-UTF-8 line is a problem of its own
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append((number, f"not UTF-8 text (byte {exc.start + 1}); save the file as UTF-8"))
                continue
        else:
            line = raw
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append((number, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        except RecursionError:
            problems.append((number, "JSON nested too deeply; a prompt line is one flat object"))
            continue
        except ValueError as exc:  # e.g. an integer over Python's 4300-digit limit
            problems.append((number, f"not usable JSON ({str(exc).split(';')[0][:120]})"))
            continue
        if not isinstance(obj, dict):
            problems.append((number, "expected a JSON object with a 'prompt' field"))
            continue
        prompt = obj.pop("prompt", None)
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append((number, "missing or empty string field 'prompt'"))
            continue
        raw_id = obj.pop("id", None)
        if raw_id is None:
            pid = f"line-{number}"
        elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
            pid = str(raw_id)
        else:
            problems.append((number, "field 'id' must be a non-empty string or an integer"))
            continue
        if pid in first_line_of_id:
            problems.append((number, f"duplicate id {pid!r} (first on line {first_line_of_id[pid]})"))
            continue
        first_line_of_id[pid] = number
        yield PromptRecord(id=pid, prompt=prompt, metadata=obj)
