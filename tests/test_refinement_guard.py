"""search.guard: refinements that stop answering the prompt are refused before they are judged."""

import json
from pathlib import Path

import pytest
from scripted import ScriptedEngine, no, refined, yes

from shared.config import RefinementGuard, RunConfig, SearchConfig
from shared.judging import Judge
from shared.records import TreeRow
from shared.refinement_guard import FORMAT_PHRASES, audit_signs, unfaithful_reason
from shared.search import SearchRoot, search_trees

EMAIL = (
    "Dear Sam, the printing press changed how books were made and read. Before it, every copy was "
    "written by hand, and few people could own one. After Gutenberg, books became cheap, ideas "
    "travelled fast, and reading spread across Europe. Best, Alex"
)
GUARD = RefinementGuard()


@pytest.mark.parametrize(
    ("refinement", "reason"),
    [
        # what the checker passed in the SmolLM2 verifier arm: the template or the constraint, echoed
        ("The complete refined Output.", "format_echo"),
        ("Two paragraphs.\nFinal Refined Output:", "format_echo"),
        ("Reflection on how to refine the Output: add a divider", "format_echo"),
        (
            "There should be 2 paragraphs. Paragraphs are separated with the markdown divider: ***",
            "too_short",
        ),
        ("Printing press: books.", "too_short"),
        (
            "The content of this message must include two paragraphs separated with the markdown divider "
            "and every paragraph must be about the topic the user asked for in the original prompt",
            "low_overlap",
        ),
        # a minimal edit: the same letter, split in two paragraphs
        (EMAIL.replace(" After Gutenberg", "\n***\nAfter Gutenberg"), None),
        # shortened (a runaway answer cut to its first sentences) but still the same answer
        (" ".join(EMAIL.split()[:24]), None),
    ],
)
def test_what_the_guard_refuses(refinement: str, reason: str | None) -> None:
    assert unfaithful_reason(EMAIL, refinement, GUARD) == reason


def test_each_rule_can_be_turned_off_and_a_short_original_needs_fewer_words() -> None:
    echo = (
        "The complete refined Output is here, with every single word of the original letter kept "
        "exactly as it stood, nothing added and nothing removed at all."
    )
    assert unfaithful_reason(EMAIL, echo, RefinementGuard(reject_format_echo=False)) == "low_overlap"
    off = RefinementGuard(reject_format_echo=False, min_words=0, min_overlap=0.0)
    assert unfaithful_reason(EMAIL, echo, off) is None
    # a six-word original: half of it (3 words) is enough, whatever min_words says
    assert unfaithful_reason("Sunny and warm all day long.", "Sunny, warm all day.", GUARD) is None
    assert unfaithful_reason("Sunny and warm all day long.", "Sunny.", GUARD) == "too_short"


def test_the_format_phrases_come_from_the_templates() -> None:
    phrases = set(FORMAT_PHRASES)
    assert {"final refined output", "reflection on how to refine the output", "[[start]]"} <= phrases
    assert {"step-by-step verification", "the complete refined output"} <= set(FORMAT_PHRASES)
    assert "yes or no" not in FORMAT_PHRASES  # ordinary English, not a format echo


def _search(guard: RefinementGuard | None, pipeline: bool, refine_fn):
    engine = ScriptedEngine(judge_fn=lambda p, r, i, k: yes(), refine_fn=refine_fn)
    cfg = SearchConfig(branching=2, beam=1, max_depth=1, parse_retries=1, guard=guard, pipeline=pipeline)
    root = SearchRoot(key="t0", prompt="Write an email in two paragraphs.", response=EMAIL, judgment=no())
    judge = Judge(engine, votes=1, tie_retries=0, seed=0)
    (tree,) = search_trees([root], engine, judge, cfg, seed=0)
    return tree, engine


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_refused_refinement_is_asked_again_and_counted(pipeline: bool) -> None:
    faithful = EMAIL.replace(" After Gutenberg", "\n***\nAfter Gutenberg")

    def echo_first(prompt, response, judgment, index, attempt):
        return refined("The complete refined Output." if attempt == 0 else faithful)

    tree, engine = _search(GUARD, pipeline, echo_first)
    assert tree.unfaithful == 2 and tree.parse_failures == 0
    assert [n.response for n in tree.nodes[1:]] == [faithful, faithful]  # only the retry was judged
    assert engine.kinds().count("refine") == 2 and tree.status == "success"
    row = tree.row("p0")
    assert row.unfaithful == 2 and TreeRow.from_record(row.as_record()) == row

    # without the guard the echo is judged, and a judge of constraints only may pass it
    tree, _ = _search(None, pipeline, echo_first)
    assert tree.unfaithful == 0 and tree.nodes[1].response == "The complete refined Output."


def test_refusals_after_the_last_retry_leave_the_tree_without_children() -> None:
    tree, engine = _search(GUARD, False, lambda *a: refined("The complete refined Output."))
    assert tree.unfaithful == 4 and tree.dropped_unparsed == 2 and tree.status == "no_children"
    assert "judge" not in engine.kinds()


def test_a_tree_row_written_before_the_guard_reads_as_none_refused() -> None:
    tree, _ = _search(GUARD, False, lambda *a: refined(EMAIL + " P.S. See you soon."))
    record = tree.row("p0").as_record()
    record.pop("unfaithful")
    assert TreeRow.from_record(record).unfaithful == 0


def test_the_guard_enters_the_refine_hash_only_when_set() -> None:
    body = {"prompts": "p.jsonl", "actor": {"model": "m"}, "refiner": {"model": "m"}}
    base = RunConfig.model_validate(body)
    guarded = base.model_copy(update={"search": base.search.model_copy(update={"guard": RefinementGuard()})})
    looser = base.model_copy(
        update={"search": base.search.model_copy(update={"guard": RefinementGuard(min_overlap=0.2)})}
    )
    hashes = {c.stage_hash("refine") for c in (base, guarded, looser)}
    assert len(hashes) == 3
    assert "guard" not in base.hashed_settings("search")  # runs created before it keep their hash
    assert base.stage_hash("sample") == guarded.stage_hash("sample")  # only the search reads it


def test_runs_created_before_the_guard_keep_their_recorded_hashes() -> None:
    """A finished run's config and stage hashes, as recorded before ``search.guard`` existed."""
    fixture = Path(__file__).parent / "data" / "pre_guard_run.json"
    recorded = json.loads(fixture.read_text())
    config = RunConfig.model_validate(recorded["config"])
    for stage, expected in recorded["hashes"].items():
        assert config.stage_hash(stage) == expected, stage


def test_the_report_audits_accepted_refinements_with_the_guard_rules(tmp_path: Path) -> None:
    from services.report import RunReport, refinement_audit_table

    faithful = EMAIL.replace(" After Gutenberg", "\n***\nAfter Gutenberg")
    trees = []
    for key, text, refused in (
        ("p0#1", faithful, 0),
        ("p1#1", "The complete refined Output.", 0),
        ("p2#0", None, 3),
    ):
        tree, _ = _search(None, False, lambda *a, text=text: refined(text or "x"))
        row = tree.row(key.split("#")[0]).model_copy(update={"key": key, "unfaithful": refused})
        if text is None:  # a tree without a success
            row = row.model_copy(update={"success_id": None, "status": "exhausted"})
        trees.append(row.as_record())
    shard = tmp_path / "iter_0" / "refine" / "shard_00000.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_text("".join(json.dumps(t) + "\n" for t in trees))
    report = RunReport("r", tmp_path, {"search": {}}, {}, iterations=[{"iteration": 0}])
    table = refinement_audit_table(report)
    assert table.rows == [["0", "2", "1/2 (50.0%)", "1", "0", "0", "0", "0", "3"]]
    assert "default rules (the run had none)" in table.note
    # a run with its own guard is audited by it: one that checks nothing refuses nothing
    loose = {"search": {"guard": {"reject_format_echo": False, "min_words": 0, "min_overlap": 0.0}}}
    report = RunReport("r", tmp_path, loose, {}, iterations=[{"iteration": 0}])
    assert refinement_audit_table(report).rows[0] == ["0", "2", "0/2 (0.0%)", "0", "0", "0", "0", "1", "3"]
    assert "the run's search.guard" in refinement_audit_table(report).note


@pytest.mark.parametrize(
    ("refinement", "signs"),
    [
        # accepted refinements of the guarded SmolLM2 verifier arm that passed the guard's rules
        (
            "SECTION 1 [content of section 1] SECTION 2 SECTION 1 SECTION 2 SECTION 3 SECTION 4 "
            "SECTION 5 SECTION 7 SECTION 8 SECTION 9 SECTION 11 SECTION 12 SECTION 13",
            ["repetition"],
        ),
        (
            "The comprehensive Refined Output is the result of the Refined Output's understanding of the "
            "Rewarded Rewards with respect to their Human Rights",
            ["format_fragment"],
        ),
        (
            "['Me, being a big part of a fun little game with the whole family, we have board game "
            "nights to a ten-year-old.'][End]]",
            ["format_fragment"],
        ),
        (EMAIL, []),  # prose: its commonest word is far below a quarter
        ("no no no no", []),  # too few words to call a loop
    ],
)
def test_the_audit_names_what_passed_the_guard(refinement: str, signs: list[str]) -> None:
    assert audit_signs(refinement) == signs
