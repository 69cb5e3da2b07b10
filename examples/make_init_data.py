"""Write the demo's stage-0 refiner data: judgments and refinements that are correct by construction.

SPaR initialises the refiner R_0 by supervised fine-tuning on judgment and refinement data from a
strong model. The demo has no strong model, so this script writes such data from constraints a
program can check and repair (casing, commas, quotes, a required keyword, a closing word, a word
limit). Every judgment's verdict is computed by the checker, and every refinement's output is the
checker's repair, so the data teaches the refiner the two answer formats without teaching it wrong
verdicts.

    python examples/make_init_data.py [--out examples/init/refiner_sft.jsonl] [--seed 0]

``--judge-pairs FILE`` also writes a pairwise judge benchmark in LLMBar's format
(``{input, output_1, output_2, label}``) for ``spar eval judge``: the same kinds of constraints on
topics the SFT data never uses (``HELD_OUT_TOPICS``), one output that follows every constraint and
one that violates at least one, by the same checkers, in random order.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.templates import judge_messages, refine_conversation  # noqa: E402

FINAL = "Final Judgement (if the Output accurately follows the Prompt):"

TOPICS = {
    "the ocean": "The ocean covers most of the planet, and its tides follow the moon.",
    "coffee": "Coffee is brewed from roasted beans, and many people drink it every morning.",
    "autumn": "In autumn the leaves turn red and gold, and the evenings grow cooler.",
    "bicycles": "A bicycle is a cheap, quiet way to travel, and riding one is good exercise.",
    "libraries": "Libraries lend books for free, and they offer quiet places to study.",
    "volcanoes": "Volcanoes form where magma rises, and some of them erupt every few years.",
    "honeybees": "Honeybees pollinate many crops, and they make honey from nectar.",
    "the moon": "The moon orbits the earth, and its phases change over about a month.",
    "rainforests": "Rainforests are warm and wet, and they are home to countless species.",
    "chess": "Chess is played on a board of sixty-four squares, and each side has sixteen pieces.",
    "recycling": "Recycling turns old paper, glass and plastic into new products.",
    "trains": "Trains carry people and goods across long distances, and they run on steel rails.",
}


# Topics of the judge benchmark only: a refiner is scored on prompts it was not fine-tuned on.
HELD_OUT_TOPICS = {
    "glaciers": "Glaciers are slow rivers of ice, and they carve deep valleys as they move.",
    "lighthouses": "Lighthouses guide ships at night, and their lamps can be seen from far away.",
    "tea": "Tea is made from the leaves of a shrub, and it is popular across the world.",
    "bridges": "Bridges carry roads over rivers, and some of them span several kilometres.",
    "owls": "Owls hunt at night, and they can turn their heads almost all the way around.",
    "deserts": "Deserts get very little rain, and their nights can be surprisingly cold.",
}


@dataclass(frozen=True)
class Constraint:
    """A checkable, repairable instruction and the words to explain a violation."""

    instruction: str
    check: Callable[[str], bool]
    repair: Callable[[str], str]
    violation: str
    satisfied: str
    damage: Callable[[str], str]


def _constraints(rng: random.Random) -> list[Constraint]:
    keyword = rng.choice(["simple", "remarkable", "important", "useful"])
    closing = rng.choice(["Done", "Enjoy", "Cheers"])
    limit = rng.choice([10, 12, 15])

    def truncate(text: str) -> str:
        return " ".join(text.rstrip(".").split()[: limit - 1]) + "."

    return [
        Constraint(
            "Write your whole answer in lowercase letters.",
            lambda t: t == t.lower(),
            str.lower,
            "the Output contains capital letters",
            "every letter is lowercase",
            lambda t: t,
        ),
        Constraint(
            "Write your whole answer in capital letters.",
            lambda t: t == t.upper(),
            str.upper,
            "the Output is not all in capital letters",
            "every letter is a capital",
            lambda t: t,
        ),
        Constraint(
            "Do not use any commas.",
            lambda t: "," not in t,
            lambda t: t.replace(",", ""),
            "the Output uses commas",
            "there are no commas",
            lambda t: t,
        ),
        Constraint(
            "Wrap your entire answer in double quotation marks.",
            lambda t: t.startswith('"') and t.endswith('"'),
            lambda t: f'"{t.strip(chr(34))}"',
            "the Output is not wrapped in double quotation marks",
            "the answer starts and ends with a double quotation mark",
            lambda t: t.strip('"'),
        ),
        Constraint(
            f"Include the word '{keyword}'.",
            lambda t: keyword in t.lower().split() or keyword in t.lower(),
            lambda t: f"{t} It is {keyword}.",
            f"the word '{keyword}' does not appear",
            f"the word '{keyword}' appears",
            lambda t: t,
        ),
        Constraint(
            f"End your answer with the word '{closing}'.",
            lambda t: t.rstrip(".!").endswith(closing),
            lambda t: f"{t} {closing}.",
            f"the Output does not end with '{closing}'",
            f"the Output ends with '{closing}'",
            lambda t: t,
        ),
        Constraint(
            f"Use fewer than {limit} words.",
            lambda t: len(t.split()) < limit,
            truncate,
            f"the Output has {limit} words or more",
            f"the Output has fewer than {limit} words",
            lambda t: t,
        ),
    ]


def _judgment(prompt_constraints: list[Constraint], response: str) -> tuple[str, bool]:
    lines = ["Step-by-step verification:"]
    ok = True
    for i, c in enumerate(prompt_constraints, start=1):
        if c.check(response):
            lines.append(f"{i}. {c.instruction} Satisfied: {c.satisfied}.")
        else:
            lines.append(f"{i}. {c.instruction} Not satisfied: {c.violation}.")
            ok = False
    lines.append(f"{FINAL} {'Yes' if ok else 'No'}")
    return "\n".join(lines), ok


def _draw_prompt(rng: random.Random, topics: dict[str, str]) -> tuple[str, str, list[Constraint]] | None:
    """(prompt, the topic's plain text, its one or two constraints); None for the contradictory
    lowercase + capitals draw."""
    topic, text = rng.choice(sorted(topics.items()))
    chosen = rng.sample(_constraints(rng), rng.choice([1, 2]))
    if len([c for c in chosen if c.instruction.startswith("Write your whole answer in")]) == 2:
        return None
    prompt = f"Write one or two sentences about {topic}. " + " ".join(c.instruction for c in chosen)
    return prompt, text, chosen


def _repaired(text: str, chosen: list[Constraint]) -> str:
    """``text`` with every constraint's repair applied in turn."""
    for c in chosen:
        text = c.repair(text)
    return text


def build_judge_pairs(seed: int, n: int) -> list[dict]:
    """``n`` LLMBar-style items on held-out topics; the preferred output passes every checker."""
    rng = random.Random(seed)
    items: list[dict] = []
    seen: set[str] = set()
    for _ in range(10_000):
        if len(items) == n:
            break
        drawn = _draw_prompt(rng, HELD_OUT_TOPICS)
        if drawn is None:
            continue
        prompt, text, chosen = drawn
        good = _repaired(text, chosen)
        if prompt in seen or not _judgment(chosen, good)[1] or _judgment(chosen, text)[1]:
            continue  # the plain text must violate something, the repaired one nothing
        seen.add(prompt)
        label = rng.choice([1, 2])
        outputs = (good, text) if label == 1 else (text, good)
        items.append({"input": prompt, "output_1": outputs[0], "output_2": outputs[1], "label": label})
    return items


def build(seed: int, judgments: int, refinements: int) -> list[dict]:
    rng = random.Random(seed)
    examples: list[dict] = []
    made_refinements = 0
    attempts = 0
    while (
        len(examples) - made_refinements < judgments or made_refinements < refinements
    ) and attempts < 10_000:
        attempts += 1
        drawn = _draw_prompt(rng, TOPICS)
        if drawn is None:
            continue
        prompt, response, chosen = drawn
        if rng.random() < 0.5:  # a passing response: repair every constraint
            response = _repaired(response, chosen)
        judgment, ok = _judgment(chosen, response)
        n_judgments = len(examples) - made_refinements
        if n_judgments < judgments:
            examples.append(
                {"messages": judge_messages(prompt, response) + [{"role": "assistant", "content": judgment}]}
            )
        if not ok and made_refinements < refinements:
            fixed = _repaired(response, chosen)
            if not _judgment(chosen, fixed)[1]:
                continue
            failing = [c for c in chosen if not c.check(response)]
            reflection = " ".join(f"The Output must satisfy: {c.instruction}" for c in failing)
            target = (
                f"Reflection on how to refine the Output: {reflection} Everything else stays as it was.\n"
                f"Final Refined Output: [[start]] {fixed} [[end]]"
            )
            messages = refine_conversation(prompt, response, judgment) + [
                {"role": "assistant", "content": target}
            ]
            examples.append({"messages": messages})
            made_refinements += 1
    rng.shuffle(examples)
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "init" / "refiner_sft.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judgments", type=int, default=96)
    parser.add_argument("--refinements", type=int, default=48)
    parser.add_argument("--judge-pairs", type=Path, help="also write a held-out pairwise judge benchmark")
    parser.add_argument("--judge-pairs-n", type=int, default=32)
    args = parser.parse_args()
    examples = build(args.seed, args.judgments, args.refinements)
    _write_jsonl(args.out, examples)
    print(f"wrote {len(examples)} examples to {args.out}")
    if args.judge_pairs is not None:
        pairs = build_judge_pairs(args.seed, args.judge_pairs_n)
        _write_jsonl(args.judge_pairs, pairs)
        print(f"wrote {len(pairs)} judge pairs to {args.judge_pairs}")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
