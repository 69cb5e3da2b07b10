"""Every shipped example config validates, and its prompt file exists (what a newcomer runs first)."""

import json
from pathlib import Path

import pytest

from services.runs import load_config_file

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").rglob("*.yaml"))


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"demo.yaml", "tiny.yaml", "tiny_iopo.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path: Path) -> None:
    config = load_config_file(path)
    assert Path(config.prompts).is_file(), f"{path.name}: prompts file {config.prompts} is missing"
    if config.init is not None:
        for data in (config.init.actor_data, config.init.refiner_data):
            assert data is None or Path(data).is_file(), f"{path.name}: init data {data} is missing"


def _init_data_module():
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "examples" / "make_init_data.py"
    spec = importlib.util.spec_from_file_location("make_init_data", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _follows(prompt: str, text: str) -> bool:
    """An oracle of its own for the script's seven instruction templates (not the script's checkers)."""
    import re

    checks = {
        r"Write your whole answer in lowercase letters\.": lambda m: text == text.lower(),
        r"Write your whole answer in capital letters\.": lambda m: text == text.upper(),
        r"Do not use any commas\.": lambda m: "," not in text,
        r"Wrap your entire answer in double quotation marks\.": lambda m: text[:1] == text[-1:] == '"',
        r"Include the word '(\w+)'\.": lambda m: m.group(1) in text.lower(),
        r"End your answer with the word '(\w+)'\.": lambda m: text.rstrip('.!"').endswith(m.group(1)),
        r"Use fewer than (\d+) words\.": lambda m: len(text.split()) < int(m.group(1)),
    }
    found = [(pattern, m) for pattern in checks for m in re.finditer(pattern, prompt)]
    assert found, f"no known instruction in {prompt!r}"
    return all(checks[pattern](m) for pattern, m in found)


def test_the_shipped_judge_benchmark_is_reproducible_held_out_and_correctly_labelled() -> None:
    from shared.evaluation.judge_eval import load_pairwise

    init = _init_data_module()
    examples = Path(__file__).resolve().parents[1] / "examples"
    benchmark = examples / "judge" / "heldout_pairs.jsonl"
    shipped = [json.loads(line) for line in benchmark.read_text().splitlines()]
    assert shipped == init.build_judge_pairs(0, 240)  # what the script writes, nothing edited by hand
    sft = [json.loads(line) for line in (examples / "init" / "refiner_sft.jsonl").read_text().splitlines()]
    assert sft == init.build(0, 96, 48)
    items = load_pairwise(benchmark)
    assert len(items) == 240 and {i.label for i in items} == {1, 2}  # >= 200: intervals of about +-6 points
    assert len({i.input for i in items}) == 240
    sft_prompts = " ".join(m["content"] for e in sft for m in e["messages"] if m["role"] == "user")
    for item in items:
        topic = item.input.split(" about ")[1].split(".")[0]
        assert topic in init.HELD_OUT_TOPICS and topic not in init.TOPICS
        assert f"about {topic}." not in sft_prompts  # the refiner is never fine-tuned on these topics
        other = item.output_2 if item.label == 1 else item.output_1
        assert _follows(item.input, item.preferred) and not _follows(item.input, other), item


def test_the_experiment_prompt_splits_are_what_the_generator_writes_and_disjoint() -> None:
    """Training (256) and validation (240) prompts: reproducible, disjoint from each other, from IFEval
    (the generator redraws collisions) and from the judge benchmark's held-out topics."""
    from shared.evaluation.synth import TOPICS, synthesize

    prompts = Path(__file__).resolve().parents[1] / "examples" / "prompts"
    read = lambda name: [json.loads(line) for line in (prompts / name).read_text().splitlines()]  # noqa: E731
    train, val = read("synth_train.jsonl"), read("synth_val.jsonl")
    assert train == synthesize(256, seed=1, max_constraints=2, id_prefix="train")
    assert val == synthesize(
        240, seed=2, max_constraints=2, id_prefix="val", exclude=[r["prompt"] for r in train]
    )
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val}
    held_out = _init_data_module().HELD_OUT_TOPICS
    assert not any(topic in synthetic for topic in held_out for synthetic in TOPICS)
