"""Synthesized instruction-following prompts whose constraints a program can check.

Each prompt is a base task written here (a task kind applied to a topic, e.g. "Write a short blog
post about urban gardening.") plus 1-4 constraints from IFEval's instruction registry. Constraints
are built by the registry's own instruction classes with arguments sampled HERE from valid ranges
(``build_description(**kwargs)``; never the classes' own unseeded random defaults), so the stored
``instruction_id_list`` + ``kwargs`` are exactly what the checker re-builds, and
:mod:`shared.judges.verifier` can judge responses to them without an LLM.

Why each choice:

* constraint types are drawn least-used first (ties broken by the seeded generator), so every type
  appears about equally often; random choice would leave rare types with almost no data;
* combinations respect the registry's ``INSTRUCTION_CONFLICTS`` (made symmetric, as the registry's
  ``conflict_make`` does) plus a few pairs the table misses but that no response can satisfy under the
  STRICT checker (an all-lowercase answer cannot hold "P.S." or "Section 1"; a quoted answer cannot
  end with a required phrase);
* types are left out when their arguments cannot be sampled meaningfully for an arbitrary task
  (``constrained_response`` fits only yes/no questions and conflicts with everything else);
* no prompt may equal or contain one of IFEval's 541 evaluation prompts, so training on these never
  trains on the benchmark.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

from .ifeval import checker, load_ifeval_prompts

TOPICS = (
    "urban gardening",
    "the history of the bicycle",
    "learning a second language as an adult",
    "remote work",
    "coral reefs",
    "the first moon landing",
    "saving money on groceries",
    "volcanoes",
    "the invention of the printing press",
    "training a puppy",
    "public libraries",
    "solar panels",
    "street food in big cities",
    "sleep and memory",
    "chess for beginners",
    "recycling plastic",
    "the life of honeybees",
    "board game nights",
    "hiking safety",
    "the water cycle",
    "starting a podcast",
    "ancient Roman roads",
    "composting at home",
    "electric cars",
)

TASK_KINDS = (
    "Write a short blog post about {topic}.",
    "Write an email to a friend about {topic}.",
    "Explain {topic} to a ten-year-old.",
    "Write a product description for a new book about {topic}.",
    "Write a short story that involves {topic}.",
    "Give advice to someone who wants to learn more about {topic}.",
    "Write a speech for a school assembly about {topic}.",
    "Write a persuasive paragraph arguing that everyone should care about {topic}.",
    "Write a FAQ about {topic}.",
    "Summarize the most important facts about {topic}.",
)

# Words for keyword / forbidden-word / first-word constraints: common, topic-neutral, lowercase.
KEYWORDS = (
    "community", "future", "simple", "history", "curious", "energy", "journey", "balance", "patience",
    "surprise", "quality", "habit", "challenge", "neighbor", "budget", "season", "adventure", "creative",
    "careful", "morning", "together", "practical", "question", "reward",
)  # fmt: skip
FIRST_WORDS = ("first", "today", "however", "finally", "imagine", "many", "most", "because")
# Latin-script languages only: letter counts and capital-word counts stay meaningful, and langdetect
# tells them apart reliably on paragraph-length text.
LANGUAGES = ("es", "fr", "de", "it", "pt")
RELATIONS = ("less than", "at least")

Sampler = Callable[[random.Random, set[str]], dict[str, Any]]


def _words(rng: random.Random, used: set[str], k: int, pool: Iterable[str] = KEYWORDS) -> list[str]:
    """``k`` distinct words unused by other constraints of the prompt (no keyword also forbidden)."""
    choices = sorted(w for w in pool if w not in used)
    picked = sorted(rng.sample(choices, k))
    used.update(picked)
    return picked


def _keyword_frequency(rng: random.Random, used: set[str]) -> dict[str, Any]:
    relation = rng.choice(RELATIONS)
    frequency = rng.randint(2, 4) if relation == "at least" else rng.randint(2, 3)
    return {"keyword": _words(rng, used, 1)[0], "frequency": frequency, "relation": relation}


def _letter_frequency(rng: random.Random, used: set[str]) -> dict[str, Any]:
    relation = rng.choice(RELATIONS)
    if relation == "at least":  # common letters, attainable counts
        return {
            "letter": rng.choice("aeinorst"),
            "let_frequency": rng.randint(5, 15),
            "let_relation": relation,
        }
    return {"letter": rng.choice("jqxz"), "let_frequency": rng.randint(3, 6), "let_relation": relation}


def _number_sentences(rng: random.Random, used: set[str]) -> dict[str, Any]:
    relation = rng.choice(RELATIONS)
    n = rng.randint(3, 8) if relation == "at least" else rng.randint(5, 12)
    return {"num_sentences": n, "relation": relation}


def _number_words(rng: random.Random, used: set[str]) -> dict[str, Any]:
    relation = rng.choice(RELATIONS)
    n = rng.choice((50, 80, 100, 150, 200)) if relation == "at least" else rng.choice((150, 200, 250, 300))
    return {"num_words": n, "relation": relation}


def _nth_paragraph(rng: random.Random, used: set[str]) -> dict[str, Any]:
    n = rng.randint(2, 4)
    word = rng.choice([w for w in FIRST_WORDS if w not in used])
    used.add(word)
    return {"num_paragraphs": n, "nth_paragraph": rng.randint(1, n), "first_word": word}


def _capital_frequency(rng: random.Random, used: set[str]) -> dict[str, Any]:
    relation = rng.choice(RELATIONS)
    n = rng.randint(2, 5) if relation == "at least" else rng.randint(3, 6)
    return {"capital_frequency": n, "capital_relation": relation}


SAMPLERS: dict[str, Sampler] = {
    "keywords:existence": lambda rng, used: {"keywords": _words(rng, used, rng.randint(1, 2))},
    "keywords:frequency": _keyword_frequency,
    "keywords:forbidden_words": lambda rng, used: {"forbidden_words": _words(rng, used, rng.randint(1, 3))},
    "keywords:letter_frequency": _letter_frequency,
    "language:response_language": lambda rng, used: {"language": rng.choice(LANGUAGES)},
    "length_constraints:number_sentences": _number_sentences,
    "length_constraints:number_paragraphs": lambda rng, used: {"num_paragraphs": rng.randint(2, 5)},
    "length_constraints:number_words": _number_words,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph,
    "detectable_content:number_placeholders": lambda rng, used: {"num_placeholders": rng.randint(1, 4)},
    "detectable_content:postscript": lambda rng, used: {"postscript_marker": rng.choice(("P.S.", "P.P.S"))},
    "detectable_format:number_bullet_lists": lambda rng, used: {"num_bullets": rng.randint(2, 5)},
    "detectable_format:number_highlighted_sections": lambda rng, used: {"num_highlights": rng.randint(1, 4)},
    "detectable_format:multiple_sections": lambda rng, used: {
        "section_spliter": rng.choice(("Section", "SECTION")),
        "num_sections": rng.randint(2, 5),
    },
    "detectable_format:json_format": lambda rng, used: {},
    "detectable_format:title": lambda rng, used: {},
    "combination:two_responses": lambda rng, used: {},
    "combination:repeat_prompt": lambda rng, used: {},  # filled in once the request text is known
    "startend:end_checker": lambda rng, used: {
        "end_phrase": rng.choice(("Any other questions?", "Is there anything else I can help with?"))
    },
    "change_case:capital_word_frequency": _capital_frequency,
    "change_case:english_capital": lambda rng, used: {},
    "change_case:english_lowercase": lambda rng, used: {},
    "punctuation:no_comma": lambda rng, used: {},
    "startend:quotation": lambda rng, used: {},
}

# Pairs the registry's table allows but a STRICT check makes unsatisfiable (or self-contradictory).
EXTRA_CONFLICTS = (
    ("change_case:english_lowercase", "detectable_content:postscript"),  # "P.S." is upper case
    ("change_case:english_lowercase", "detectable_format:multiple_sections"),  # "Section 1"
    ("change_case:english_lowercase", "startend:end_checker"),  # "Any other questions?"
    ("change_case:english_capital", "detectable_content:number_placeholders"),  # "[address]"
    ("change_case:english_capital", "detectable_format:multiple_sections"),  # may be "Section"
    ("change_case:english_capital", "startend:end_checker"),
    ("change_case:english_capital", "length_constraints:nth_paragraph_first_word"),
    ("startend:quotation", "startend:end_checker"),  # the answer must end with the quote mark
    ("startend:quotation", "detectable_content:postscript"),
    ("detectable_content:postscript", "startend:end_checker"),  # both want the last word
    ("language:response_language", "keywords:letter_frequency"),
    ("language:response_language", "change_case:capital_word_frequency"),
    ("language:response_language", "length_constraints:nth_paragraph_first_word"),  # English first word
    ("length_constraints:number_paragraphs", "detectable_format:multiple_sections"),
    ("length_constraints:nth_paragraph_first_word", "detectable_format:multiple_sections"),  # "Section" first
    ("length_constraints:number_paragraphs", "combination:two_responses"),
    ("length_constraints:number_words", "combination:two_responses"),
)


@cache
def conflicts() -> dict[str, frozenset[str]]:
    """Symmetric conflict sets (every type conflicts with itself) over the types we sample.

    Built from a copy: the registry's ``conflict_make`` mutates its module-level table in place.
    """
    registry = checker().instructions_registry
    table: dict[str, set[str]] = {
        k: set(v) & set(SAMPLERS) for k, v in registry.INSTRUCTION_CONFLICTS.items()
    }
    for a, b in EXTRA_CONFLICTS:
        table.setdefault(a, set()).add(b)
        table.setdefault(b, set()).add(a)
    out: dict[str, set[str]] = {k: {k} for k in SAMPLERS}
    for a, others in table.items():
        if a not in SAMPLERS:
            continue
        for b in others:
            out[a].add(b)
            out[b].add(a)
    return {k: frozenset(v) for k, v in out.items()}


def instruction_types() -> tuple[str, ...]:
    """The registry ids this module samples (all of ``SAMPLERS`` that the installed registry has)."""
    registry = checker().INSTRUCTION_DICT
    return tuple(sorted(k for k in SAMPLERS if k in registry))


def build_description(instruction_id: str, kwargs: dict[str, Any]) -> str:
    """The registry's text for one instruction, refusing arguments it would silently replace.

    The classes fall back to unseeded random values for missing/invalid arguments; comparing
    ``get_instruction_args()`` with what we passed catches that, so the file stays reproducible.
    """
    instruction = checker().INSTRUCTION_DICT[instruction_id](instruction_id)
    text = instruction.build_description(**kwargs)
    built = instruction.get_instruction_args() or {}
    for key, value in kwargs.items():
        got = built.get(key)
        if (sorted(got) if isinstance(got, list) else got) != (
            sorted(value) if isinstance(value, list) else value
        ):
            raise ValueError(f"{instruction_id}: argument {key}={value!r} was replaced by {got!r}")
    return str(text)


@cache
def _ifeval_prompts() -> tuple[str, ...]:
    return tuple(item["prompt"] for item in load_ifeval_prompts())


def collides_with_ifeval(prompt: str) -> bool:
    """True when ``prompt`` equals or contains one of IFEval's 541 evaluation prompts."""
    return any(p == prompt or p in prompt for p in _ifeval_prompts())


def _pick_types(rng: random.Random, k: int, usage: Counter[str], types: tuple[str, ...]) -> list[str]:
    """Up to ``k`` mutually compatible types, each the least used so far among those still allowed.

    Fewer than ``k`` when nothing compatible and not over-used is left: balance wins over count.
    """
    table = conflicts()
    chosen: list[str] = []
    for _ in range(k):
        floor = min(usage[t] for t in types)
        # A type already ahead of the least-used one by 2 is not added as a filler: types compatible
        # with almost everything (e.g. keywords:existence) would otherwise run away from the rest.
        allowed = [
            t
            for t in types
            if t not in chosen and usage[t] <= floor + 1 and not any(t in table[c] for c in chosen)
        ]
        if not allowed:
            break
        low = min(usage[t] for t in allowed)
        pick = rng.choice([t for t in allowed if usage[t] == low])
        chosen.append(pick)
        usage[pick] += 1
    return chosen


def as_sentence(text: str) -> str:
    """A description ending in punctuation, so the next one does not run on (some end mid-example)."""
    text = text.rstrip()
    return text if text[-1:] in ".?!)\"'" else text + "."


def compose_prompt(rng: random.Random, types: list[str]) -> dict[str, Any]:
    """One prompt: a base task + the constraints' descriptions (``repeat_prompt`` last, since its
    argument is the whole request before it)."""
    task = rng.choice(TASK_KINDS).format(topic=rng.choice(TOPICS))
    ordered = [t for t in types if t != "combination:repeat_prompt"]
    rng.shuffle(ordered)
    used: set[str] = set()
    ids: list[str] = []
    kwargs: list[dict[str, Any]] = []
    parts = [task]
    for instruction_id in ordered:
        args = SAMPLERS[instruction_id](rng, used)
        parts.append(as_sentence(build_description(instruction_id, args)))
        ids.append(instruction_id)
        kwargs.append(args)
    prompt = " ".join(parts)
    if "combination:repeat_prompt" in types:
        args = {"prompt_to_repeat": prompt}
        prompt = f"{prompt} {build_description('combination:repeat_prompt', args)}"
        ids.append("combination:repeat_prompt")
        kwargs.append(args)
    return {"prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def synthesize(
    n: int,
    seed: int = 0,
    max_constraints: int = 4,
    id_prefix: str = "synth",
    exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``n`` prompts with 1..``max_constraints`` constraints each, deterministic for ``seed``.

    Each record is ``{"id", "prompt", "instruction_id_list", "kwargs"}`` (IFEval's format: kwargs is a
    list of dicts aligned with the ids). Prompts that repeat an earlier one, collide with IFEval or
    appear in ``exclude`` (another split's prompts: a validation split disjoint from training) are
    redrawn.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if not 1 <= max_constraints <= 4:
        raise ValueError("max_constraints must be between 1 and 4")
    rng = random.Random(seed)
    types = instruction_types()
    usage: Counter[str] = Counter({t: 0 for t in types})
    seen: set[str] = set(exclude)
    records: list[dict[str, Any]] = []
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 50 * n:
            raise RuntimeError(f"could not synthesize {n} distinct prompts (got {len(records)})")
        trial = usage.copy()
        chosen = _pick_types(rng, rng.randint(1, max_constraints), trial, types)
        record = compose_prompt(rng, chosen)
        if record["prompt"] in seen or collides_with_ifeval(record["prompt"]):
            continue
        usage = trial
        seen.add(record["prompt"])
        records.append({"id": f"{id_prefix}-{len(records):04d}", **record})
    return records


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    """Write one JSON object per line (UTF-8, stable key order); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
