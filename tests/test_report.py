"""`spar report` on fabricated run directories: paired differences, judge intervals beside the
trivial judges, truncation, resolved settings, exported generations re-scored the way Google's
IFEval code does. Every outcome is chosen here, so each number asserted is worked out by hand."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
from report_fixtures import FakeRun, Outcome, outcomes, prompts_file, write_run

from services.cli import main
from services.report import load_run, render_markdown
from services.report_stats import (
    coin_flip,
    judge_estimates,
    score_labels,
    trivial_judges,
)
from shared.evaluation.judge_eval import pointwise_scores

N = 40


def mixed(first_pass: int, half: range) -> list[Outcome]:
    """Two instructions per prompt: prompts < ``first_pass`` pass both; prompts in ``half`` pass
    the first instruction strictly and both loosely; the rest fail both."""
    rows: list[Outcome] = []
    for i in range(N):
        if i < first_pass:
            rows.append(([True, True], [True, True]))
        elif i in half:
            rows.append(([True, False], [True, True]))
        else:
            rows.append(([False, False], [False, False]))
    return rows


# v0 passes prompts 0-9; v1 adds prompts 10-19 loosely only (one of two instructions strictly);
# v2 passes 5-21 outright
V0, V1, V2 = mixed(10, range(0)), mixed(10, range(10, 20)), outcomes([5 <= i < 22 for i in range(N)], 2)
JUDGE = {
    "v0": [("fail", "fail")] * 20 + [("pass", "fail")] * 4,
    "v1": [("pass", "fail")] * 12 + [("pass", "pass")] * 12,
    "v2": [("pass", "fail")] * 14 + [("undecided", "pass")] * 10,
}


LOOP = "Here is my answer. " + "I love the sea and the sky. " * 12
PROSE_LIKE = " ".join(f"Sentence {i} says something new about topic {i * 7}." for i in range(12))


@pytest.fixture()
def runs(tmp_path: Path) -> list[Path]:
    prompts = prompts_file(tmp_path)
    main_arm = FakeRun(
        "run-a",
        "main",
        {"v0": V0, "v1": V1, "v2": V2},
        judge=JUDGE,
        validation={"v0": V0, "v1": V2},
        capped_share={"v1": 0.075, "v2": 0.025},
        # 3 of v1's 40 IFEval answers and 2 of iteration 0's 16 samples end in a loop
        responses={"v1": [LOOP] * 3 + [f"answer {k}" for k in range(3, N)]},
        sample_texts={0: [LOOP, "short " + LOOP] + [PROSE_LIKE] * 14},
        # the tree's root (a looping negative) is not the refiner's: 1 of its 3 children loops
        refine_texts={0: [LOOP, PROSE_LIKE, None]},
        # every sampled judgment counts, of every response: 2 of 5
        judgments={0: [[LOOP, "Yes."], [PROSE_LIKE, LOOP, "No."]]},
        stage_engine={
            "sample": {"calls": 1, "completions": 16, "length_capped": 2},
            "judge": {"calls": 1, "completions": 100, "length_capped": 4},
            "refine": {"calls": 2, "completions": 40, "length_capped": 1},
        },
    )
    other = FakeRun("run-b", "samples", {"v0": V0, "v1": V2, "v2": V1}, judge=JUDGE)
    return [write_run(tmp_path / "runs", r, prompts) for r in (main_arm, other)]


def row(text: str, prefix: str) -> list[str]:
    """The cells of the Markdown table row that starts with ``prefix``."""
    line = next(x for x in text.splitlines() if x.startswith(prefix))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_paired_differences_per_version_and_between_arms(runs: list[Path]) -> None:
    text = render_markdown([load_run(d) for d in runs])
    assert text.index("### Last evaluated versions") < text.index("### Paired differences between versions")
    assert text.index("### Paired differences") < text.index("### IFEval by actor version")

    # v1 - v0: no prompt newly passes strictly (McNemar +0/-0, p = 1); 10 of 80 instructions gain
    # strictly (+12.5); 10 prompts and 20 instructions gain loosely (+25.0 each)
    cells = row(text, "| main | IFEval | v1 - v0 |")
    assert cells[3] == "40"
    assert cells[4] == "+0.0 [+0.0, +0.0]"
    assert cells[5].startswith("+12.5 [") and cells[5].endswith("]*")
    assert cells[6].startswith("+25.0 [") and cells[6].endswith("]*")
    assert cells[7].startswith("+25.0 [") and cells[7].endswith("]*")
    assert cells[8:] == ["p=1 (+0/-0)", "p=0.00195 (+10/-0)"]  # 2 / 2**10
    # v2 - v1: strictly gained 10-21, lost 0-4 (p = 2 * sum C(17, <=5) / 2**17); loosely gained
    # 20-21, lost 0-4 (p = 2 * (1 + 7 + 21) / 128)
    cells = row(text, "| main | IFEval | v2 - v1 |")
    assert cells[4].startswith("+17.5 [") and cells[8] == "p=0.143 (+12/-5)"
    assert cells[6].startswith("-7.5 [") and not cells[6].endswith("*") and cells[9] == "p=0.453 (+2/-5)"
    # v1 is compared with v0 once, v2 with v0 and with v1; the validation split likewise
    assert text.count("| main | IFEval | v1 - v0 |") == 1 and "| main | IFEval | v2 - v0 |" in text
    assert row(text, "| main | validation | v1 - v0 |")[4].startswith("+17.5 [")
    # between arms at the same version, paired by prompt: samples' v1 is main's v2 and vice versa
    cells = row(text, "| samples - main | v1 | IFEval |")
    assert cells[4].startswith("+17.5 [") and cells[-2:] == ["p=0.143 (+12/-5)", "p=0.453 (+2/-5)"]
    assert row(text, "| samples - main | v2 | IFEval |")[4].startswith("-17.5 [")
    assert "| samples - main | v0 |" not in text  # v0 is the same model in every arm


def test_paired_intervals_are_the_bootstrap_of_the_same_prompts(runs: list[Path]) -> None:
    """The printed interval is shared.paired's on the per-prompt units, not separate intervals."""
    from shared.paired import paired_bootstrap

    report = load_run(runs[0])
    (v1_v0, *_) = report.comparisons["ifeval"]
    expected = paired_bootstrap(
        [(int(all(s)), 1) for s, _ in V0], [(int(all(lo)), 1) for _, lo in V1], seed=2
    )
    assert v1_v0.differences["prompt_loose"] == expected
    assert [c.label for c in report.comparisons["ifeval"]] == ["v1 - v0", "v2 - v0", "v2 - v1"]


def test_judge_accuracy_has_intervals_and_trivial_judges(runs: list[Path]) -> None:
    text = render_markdown([load_run(runs[0])])
    # v0: 4 of 24 pairs right; 28 of 48 outputs right; F1 = 2*4 / (24 + 4 + 0)
    cells = row(text, "| v0 | refiner | 24 |")
    assert [c.split(" [")[0] for c in cells[3:6]] == ["16.7", "58.3", "28.6"]
    assert all("[" in c for c in cells[3:6])
    # v2: 10 preferred outputs undecided (wrong) and their others passed
    assert row(text, "| v2 | refiner | 24 |")[-1] == "20.8"
    assert row(text, "|  | always-Yes | 24 |")[3:6] == ["0.0", "50.0", "66.7"]
    assert row(text, "|  | always-No | 24 |")[3:6] == ["0.0", "50.0", "0.0"]
    assert row(text, "|  | coin flip | 24 |")[3].startswith("25.0 [")
    assert "always-Yes judges every output pass" in text


def test_judge_scores_match_judge_eval_and_intervals_cover_them() -> None:
    rng = random.Random(7)
    for _ in range(20):
        labels = [
            (rng.choice(["pass", "fail", "undecided"]), rng.choice(["pass", "fail", "undecided"]))
            for _ in range(30)
        ]
        pp = sum(p == "pass" for p, _ in labels)
        of = sum(o == "fail" for _, o in labels)
        op = sum(o == "pass" for _, o in labels)
        reference = pointwise_scores(pp, of, op, len(labels))
        estimates = judge_estimates(labels, samples=300)
        assert estimates["pointwise"].value == pytest.approx(reference["pointwise_accuracy"])
        assert estimates["pointwise_f1"].value == pytest.approx(reference["pointwise_f1"])
        for e in estimates.values():
            assert e.low is not None and e.high is not None and e.low <= e.value <= e.high


def test_the_coin_flip_range_is_what_coin_flips_score() -> None:
    """The exact expected scores and 95% ranges agree with simulated coin-flip judges."""
    n, rng = 24, random.Random(3)
    exact = coin_flip(n)
    assert exact["pairwise"].value == pytest.approx(0.25) and exact["pointwise"].value == pytest.approx(0.5)
    flips = [
        score_labels([(rng.choice(["pass", "fail"]), rng.choice(["pass", "fail"])) for _ in range(n)])
        for _ in range(20000)
    ]
    for name, e in exact.items():
        values = sorted(f[name] for f in flips)
        assert sum(values) / len(values) == pytest.approx(e.value, abs=0.005), name
        inside = sum(e.low <= v <= e.high for v in values) / len(values)
        assert 0.95 <= inside <= 0.995, name  # discrete: at least 95% of the mass, not much more
    assert trivial_judges(0) == {}


def test_truncation_and_resolved_settings(runs: list[Path]) -> None:
    text = render_markdown([load_run(runs[0])])
    assert row(text, "| 0 | sample | 2/16")[2] == "2/16 (12.5%) ⚠"
    assert row(text, "| 1 | judge | 4/100")[2] == "4/100 (4.0%)"  # under 5%: not flagged
    assert row(text, "| eval | IFEval v1 |")[2] == "3/40 (7.5%) ⚠"
    assert row(text, "| eval | IFEval v2 |")[2] == "1/40 (2.5%)"
    assert "⚠ `run-a`: 5% or more cut at max_new_tokens in sample@0, sample@1, IFEval v1" in text
    # beside each share, the texts that end in a verbatim loop: counted where the stage kept them
    assert row(text, "| 0 | sample | 2/16")[3] == "2/16 (12.5%)"
    assert row(text, "| 1 | sample | 2/16")[3] == "-"  # no sample shard left
    assert row(text, "| 0 | judge | 4/100")[3] == "2/5 (40.0%)"
    assert row(text, "| 1 | judge | 4/100")[3] == "-"  # no judge shard left
    assert row(text, "| 0 | refine | 1/40")[3] == "1/3 (33.3%)"
    assert row(text, "| 1 | refine | 1/40")[3] == "-"
    assert row(text, "| eval | IFEval v1 |")[3] == "3/40 (7.5%)"
    assert row(text, "| eval | IFEval v2 |")[3] == "0/40 (0.0%)"
    # the cost table carries the same share per stage
    assert row(text, "| 0 | judge | 1 |")[5] == "4/100 (4.0%)"
    cells = row(text, "| sample | 0, 1 |")
    assert cells[2] == "actor: device=cpu dtype=bfloat16 engine=vllm version=0.32.0"
    assert row(text, "| train_actor | 0, 1 |")[2] == "train_actor: device=cpu precision=float32"


IFEVAL_N = 6


def _real_items() -> list[dict]:
    from shared.evaluation.ifeval import load_ifeval_prompts

    return load_ifeval_prompts(IFEVAL_N)


def _answers(items: list[dict], style: str) -> list[str]:
    """Answers that pass some IFEval checks and fail others (what exactly is the checker's call)."""
    if style == "short":
        return ["yes" for _ in items]
    return [("Here is my answer, truly. " * 60).strip() + f" ({item['key']})" for item in items]


def test_older_runs_are_rescored_and_exports_rescore_with_googles_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPAR_CACHE_DIR", str(tmp_path / "cache"))  # the checker's Punkt data goes here
    from eval_framework.tasks.ifeval import evaluation as google

    from shared.evaluation.ifeval import checker, data_path, score_responses

    items = _real_items()
    answers = {"v0": _answers(items, "short"), "v1": _answers(items, "long")}
    records = {v: score_responses(items, a)["records"] for v, a in answers.items()}
    scored = {v: [(r["strict"], r["loose"]) for r in rs] for v, rs in records.items()}
    judge_file = tmp_path / "pairs.jsonl"
    judge_file.write_text(
        "".join(
            json.dumps({"input": f"Say {w}.", "output_1": w, "output_2": w.upper(), "label": 1}) + "\n"
            for w in ("a", "b", "c")
        )
    )
    common = {"responses": answers, "items": items, "judge_file": judge_file}
    labels = {"v0": [("pass", "fail"), ("fail", "fail"), ("pass", "pass")]}
    old = FakeRun("old", "old", scored, judge=labels, keep_records=False, **common)
    new = FakeRun("new", "new", scored, judge=labels, **common)
    prompts = prompts_file(tmp_path)
    old_dir, new_dir = (write_run(tmp_path / "runs", r, prompts) for r in (old, new))

    old_report, new_report = load_run(old_dir), load_run(new_dir)
    assert old_report.eval_rows.of("ifeval")["v1"].note == "re-scored from the kept responses"

    def outcomes_of(report) -> dict:
        records = report.records("ifeval").items()
        return {v: [(r["key"], r["strict"], r["loose"]) for r in rs] for v, rs in records}

    assert outcomes_of(old_report) == outcomes_of(new_report)
    assert old_report.comparisons == new_report.comparisons
    assert "IFEval v1: per-prompt records re-scored from the kept responses." in render_markdown([old_report])

    out = tmp_path / "export"
    assert (
        main(
            [
                "report",
                str(old_dir),
                "--format",
                "md",
                "--out",
                str(tmp_path / "r.md"),
                "--export-generations",
                str(out),
            ]
        )
        == 0
    )
    index = json.loads((out / "index.json").read_text())
    assert index["files"]["ifeval_v1.jsonl.gz"]["lines"] == IFEVAL_N
    assert set(index["files"]) == {"ifeval_v0.jsonl.gz", "ifeval_v1.jsonl.gz", "judge_v0.jsonl.gz"}
    first = (out / "ifeval_v1.jsonl.gz").read_bytes()
    export_again = tmp_path / "again"
    assert (
        main(
            [
                "report",
                str(old_dir),
                "--format",
                "md",
                "--out",
                str(tmp_path / "r.md"),
                "--export-generations",
                str(export_again),
            ]
        )
        == 0
    )
    assert (export_again / "ifeval_v1.jsonl.gz").read_bytes() == first  # byte-stable for committing

    checker()  # Google's checker needs the Punkt model and a seeded language detector, as ours does
    for version in ("v0", "v1"):
        # exactly what Google's evaluation_main does with --input_data / --input_response_data
        plain = tmp_path / f"responses_{version}.jsonl"
        plain.write_bytes(gzip.decompress((out / f"ifeval_{version}.jsonl.gz").read_bytes()))
        prompt_to_response = google.read_prompt_to_response_dict(str(plain))
        inputs = [i for i in google.read_prompt_list(str(data_path())) if i.prompt in prompt_to_response]
        strict = [
            google.test_instruction_following_strict(i, prompt_to_response).follow_all_instructions
            for i in inputs
        ]
        loose = [
            google.test_instruction_following_loose(i, prompt_to_response).follow_all_instructions
            for i in inputs
        ]
        assert len(inputs) == IFEVAL_N
        assert strict == [all(r["strict"]) for r in records[version]]
        assert loose == [all(r["loose"]) for r in records[version]]
    assert records["v0"] != records["v1"]  # the two versions differ, so the comparison above can fail

    judged = [json.loads(x) for x in gzip.decompress((out / "judge_v0.jsonl.gz").read_bytes()).splitlines()]
    assert [(j["preferred"], j["other"]) for j in judged] == labels["v0"]
    assert [(j["input"], j["preferred_output"], j["other_output"]) for j in judged][1] == ("Say b.", "b", "B")


def test_both_pages_draw_with_the_one_chart_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from services import charts
    from services.dashboard import dashboard_html
    from services.report_html import report_script, report_style

    for page in (dashboard_html(), report_script()):
        assert "@include" not in page and page.count("function lineChart(") == 1
    assert charts.static_text("charts.js").strip().splitlines()[-1] in report_script()
    assert ".chart text.title" in report_style() and ".chart text.title" in dashboard_html()
    indented = charts.include_static("    // @include charts.js")
    assert all(line.startswith("    ") for line in indented.splitlines() if line)
    monkeypatch.setattr(charts, "static_text", lambda name: f"// @include {name}")
    with pytest.raises(ValueError, match="includes itself"):
        charts.include_static("// @include loop.js")


def test_runs_of_one_config_are_told_apart_by_their_run_ids(tmp_path: Path) -> None:
    """Tuning points forked from one config, or an arm run again, share the config's name: the
    tables name them by run id (a table of two "main" rows could not be read)."""
    prompts = prompts_file(tmp_path)
    runs = [
        write_run(tmp_path / "runs", FakeRun(run_id, "main", {"v0": V0, "v1": v1}), prompts)
        for run_id, v1 in (("tune-a", V1), ("tune-b", V2))
    ]
    text = render_markdown([load_run(d) for d in runs])
    assert "| tune-b - tune-a | v1 | IFEval |" in text
    assert row(text, "| tune-a | IFEval | v1 - v0 |") and row(text, "| tune-b | IFEval | v1 - v0 |")
    assert "| main |" not in text
    # alone, or beside another arm, a run keeps its arm's name
    alone = render_markdown([load_run(runs[0])])
    assert "| main | IFEval | v1 - v0 |" in alone and "tune-a |" not in alone.split("## Run")[0]
