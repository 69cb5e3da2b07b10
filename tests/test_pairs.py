"""Assembly of DPO pairs and the RFT mix: root as rejected, parent chat as input, caps, dedup."""

import pytest
from pydantic import ValidationError
from scripted import ScriptedEngine, no, yes

from shared.config import CapsConfig, SearchConfig
from shared.judging import Judge
from shared.pairs import JudgedResponse, assemble, dpo_pair, refinement_example, tree_judgment_examples
from shared.records import JudgeCounts, PairRow
from shared.search import SearchRoot, search_trees
from shared.templates import REFINE_INSTRUCTION, judge_prompt


def value_votes(value_of):
    return lambda p, r, i, k: yes() if i < round(4 * value_of(r)) else no()


def grow(judge_fn, n=1, prompt="x", **cfg):
    engine = ScriptedEngine(judge_fn=judge_fn)
    roots = [
        SearchRoot(key=f"t{i}", prompt=f"{prompt}{i}", response=f"neg{i}", judgment=no()) for i in range(n)
    ]
    return search_trees(roots, engine, Judge(engine, votes=4), SearchConfig(**cfg), seed=0)


def test_pair_rejects_the_root_not_the_parent() -> None:
    (tree,) = grow(value_votes(lambda r: 1.0 if r.count("/") == 2 else 0.25))
    pair = dpo_pair("p0", tree)
    assert tree.success.depth == 2
    assert pair.rejected == "neg0" and pair.chosen == tree.success.response
    assert pair.prompt == "x0" and pair.prompt_id == "p0"


def test_no_pair_and_no_refinement_example_without_success() -> None:
    (tree,) = grow(value_votes(lambda r: 0.25), max_depth=1)
    assert dpo_pair("p", tree) is None and refinement_example("p", tree) is None


def test_refinement_example_is_the_parents_chat_and_the_childs_full_output() -> None:
    (tree,) = grow(value_votes(lambda r: 1.0 if r.count("/") == 2 else 0.25))
    example = refinement_example("p0", tree)
    parent = tree.nodes[tree.success.parent]
    messages = [m.as_record() for m in example.messages]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == judge_prompt("x0", parent.response)
    assert messages[1]["content"] == parent.judgment
    assert messages[2]["content"] == REFINE_INSTRUCTION
    assert messages[3]["content"] == tree.success.raw and "[[start]]" in messages[3]["content"]


def test_tree_judgments_come_from_non_unanimous_nodes_one_of_each_kind() -> None:
    # values 0.25 (fail, dissent), 0.75 (pass, dissent), 0 (unanimous), 0.5 never stored (tie)
    (tree,) = grow(
        value_votes(lambda r: {"0": 0.25, "1": 0.0, "2": 0.75}[r[-1]]), success_threshold=0.9, max_depth=2
    )
    examples = tree_judgment_examples("p", tree, seed=0)
    assert sorted(e.part for e in examples) == ["tree_fail", "tree_pass"]
    for e in examples:
        response = e.messages[0].content
        node = next(n for n in tree.nodes if judge_prompt("x0", n.response) == response)
        assert 0 < node.value < 1
        assert (node.value > 0.5) == (e.part == "tree_pass")
        assert e.messages[1].content == node.judgment


def test_unanimous_trees_give_no_judgment_examples() -> None:
    (tree,) = grow(value_votes(lambda r: 0.0), max_depth=1)
    assert tree_judgment_examples("p", tree, seed=0) == []


def judged(response: str, labels_yes: int, votes: int = 4, prompt: str = "x") -> JudgedResponse:
    engine = ScriptedEngine(judge_fn=lambda p, r, i, k: yes() if i < labels_yes else no())
    (j,) = Judge(engine, votes=votes).judge([(prompt, response)])
    return JudgedResponse("p", prompt, response, j)


def test_stage2_examples_only_from_votes_with_dissent() -> None:
    data = assemble(
        [],
        [judged("a", 3), judged("b", 1), judged("c", 4), judged("d", 0), judged("e", 2)],
        CapsConfig(),
        seed=0,
    )
    parts = sorted((e.part, e.messages[0].content.split("[Output]\n")[1][0]) for e in data.rft)
    assert parts == [("stage2_fail", "b"), ("stage2_pass", "a")]


def test_caps_apply_per_part_with_a_seeded_choice() -> None:
    stage2 = [judged(f"r{i}", 3) for i in range(10)]
    a = assemble([], stage2, CapsConfig(stage2_pass=4), seed=1)
    b = assemble([], stage2, CapsConfig(stage2_pass=4), seed=1)
    assert a.counts.rft_stage2_pass == 4 and a.counts.rft_stage2_pass_candidates == 10
    assert a.rft == b.rft
    assert assemble([], stage2, CapsConfig(stage2_pass=0), seed=1).rft == []


def test_dedup_by_first_user_message_across_the_mix() -> None:
    # the same (prompt, response) judged twice in stage 2 gives one example
    one = judged("same", 3)
    data = assemble([], [one, one, judged("other", 3)], CapsConfig(), seed=0)
    assert data.counts.rft_stage2_pass_candidates == 3 and data.counts.rft == 2


def test_refinement_examples_win_dedup_over_judgments_of_the_same_response() -> None:
    (tree,) = grow(value_votes(lambda r: 1.0 if r.count("/") == 2 else 0.25))
    parent = tree.nodes[tree.success.parent]
    # a stage-2 judgment of the parent response under the same prompt shares the first user message
    engine = ScriptedEngine(judge_fn=lambda p, r, i, k: yes() if i == 0 else no())
    (j,) = Judge(engine, votes=4).judge([("x0", parent.response)])
    data = assemble([("p0", tree)], [JudgedResponse("p0", "x0", parent.response, j)], CapsConfig(), seed=0)
    assert data.counts.rft_refinement == 1
    assert data.counts.rft_stage2_fail_candidates == 1 and data.counts.rft_stage2_fail == 0


def test_pairs_are_deduplicated_and_capped() -> None:
    trees = grow(value_votes(lambda r: 1.0), n=3)
    same = [("p0", trees[0]), ("p0", trees[0]), ("p1", trees[1]), ("p2", trees[2])]
    data = assemble(same, [], CapsConfig(), seed=0)
    assert data.counts.pairs_unique == 3 and len(data.pairs) == 3
    assert len(assemble(same, [], CapsConfig(), seed=0, max_pairs=2).pairs) == 2


def test_records_refuse_unknown_and_missing_fields_by_name() -> None:
    (tree,) = grow(value_votes(lambda r: 1.0 if r.count("/") == 2 else 0.25))
    record = dpo_pair("p0", tree).as_record()
    assert list(record) == [
        "prompt_id",
        "tree",
        "prompt",
        "chosen",
        "rejected",
        "rejected_judgment",
        "chosen_value",
        "depth",
    ]
    assert PairRow.from_record(record) == dpo_pair("p0", tree)
    with pytest.raises(ValidationError, match="chosen"):
        PairRow.from_record({k: v for k, v in record.items() if k != "chosen"})
    with pytest.raises(ValidationError, match="chosen_text"):
        PairRow.from_record(record | {"chosen_text": "renamed"})


def test_counts_are_typed_and_optional_counts_stay_out_of_the_record() -> None:
    counts = JudgeCounts(pass_=2, fail=1)
    assert counts.as_record()["pass"] == 2 and "agreement_n" not in counts.as_record()
    assert JudgeCounts.from_record(counts.as_record()) == counts
    with pytest.raises(ValidationError, match="pases"):
        JudgeCounts.from_record({"pases": 1})


def test_version_metadata_is_validated_when_written(tmp_path) -> None:
    from shared.runtime.versions import read_metadata, write_metadata

    meta = {
        "role": "actor",
        "version": "v1",
        "parent": "v0 (tiny)",
        "objective": "dpo",
        "data": {"file": "pairs.jsonl", "sha256": "0" * 64, "records": 0},
        "hyperparameters": {},
        "created_at": "2026-12-02T00:00:00+00:00",
        "alias_of": "v0",
    }
    write_metadata(tmp_path, meta)
    read = read_metadata(tmp_path)
    assert read is not None and read.alias_of == "v0" and read.data.records == 0 and not read.adapter
    with pytest.raises(ValidationError, match="alias"):
        write_metadata(tmp_path, meta | {"alias": "v0"})


def test_sample_pairs_contrast_a_passing_and_a_failing_sample_of_one_prompt() -> None:
    from shared.pairs import sample_pairs

    stage2 = [judged("good", 4, prompt="x"), judged("bad", 0, prompt="x"), judged("only", 4, prompt="y")]
    stage2[2] = JudgedResponse("p2", "y", "only", stage2[2].judgment)  # a prompt with no failing sample
    (pair,) = sample_pairs(stage2, seed=0)
    assert (pair.prompt, pair.chosen, pair.rejected, pair.depth) == ("x", "good", "bad", 0)
    data = assemble([], stage2, CapsConfig(), seed=0, pairs_from="samples")
    assert [p.chosen for p in data.pairs] == ["good"] and data.counts.pairs == 1
    assert assemble([], stage2, CapsConfig(), seed=0).pairs == []  # refinement pairs need trees
