"""The local executor and stage runners with a scripted engine: files, counts, resume, bad input."""

import json
from pathlib import Path

import pytest
import yaml
from scripted import ScriptedEngine, no, refined, yes

from services.local import LocalExecutor
from services.runs import ConfigError, create_run, load_config_file, open_run
from services.summary import iteration_summary
from shared.prompts import PromptFileError
from shared.runtime.artifacts import read_json, read_jsonl
from workers.stages import ConfigChangedError

N_PROMPTS = 10


def judge_fn(p, r, i, k):
    # actor answers are judged by their index: answer 0 passes, others fail; refinements of depth 2 pass
    if r.startswith("answer 0"):
        return yes()
    return yes() if r.count("/") >= 2 else no()


class Provider:
    def __init__(self, engine):
        self.engine = engine
        self.versions = []

    def engine_for(self, role, version):
        self.versions.append((role, version.version))
        return self.engine

    def release(self):
        pass


def write_config(tmp_path: Path, **overrides) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text(
            "".join(
                json.dumps({"id": f"p{i}", "prompt": f"Task {i}.", "tag": i}) + "\n" for i in range(N_PROMPTS)
            )
        )
    config = {
        "name": "t",
        "prompts": "prompts.jsonl",
        "shard_size": 4,
        "actor": {"model": "tiny"},
        "refiner": {"model": "tiny"},
        "sample": {"num_responses": 3},
        "judge": {"votes": 3},
        "stages": ["sample", "judge", "refine", "assemble"],
    }
    config.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_run(tmp_path: Path, run_id="r1", **overrides):
    config = load_config_file(write_config(tmp_path, **overrides))
    return create_run(config, tmp_path / "runs", run_id)


def test_a_run_produces_every_stage_output(tmp_path: Path) -> None:
    paths = make_run(tmp_path)
    engine = ScriptedEngine(judge_fn=judge_fn)
    LocalExecutor(paths, Provider(engine)).run()

    assert paths.num_prompt_shards() == 3
    for stage in ("sample", "judge", "refine"):
        for k in range(3):
            assert paths.shard(0, stage, k).exists() and paths.shard_done(0, stage, k).exists()
    judged = [row for k in range(3) for row in read_jsonl(paths.shard(0, "judge", k))]
    assert len(judged) == N_PROMPTS
    assert judged[0]["metadata"] == {"tag": 0}  # metadata is carried through
    assert all(len(row["negatives"]) == 1 and row["negatives"][0] in (1, 2) for row in judged)

    pairs = list(read_jsonl(paths.data_file(0, "pairs.jsonl")))
    assert len(pairs) == N_PROMPTS
    assert all(p["rejected"].startswith("answer ") and p["chosen"].count("/") == 2 for p in pairs)
    rft = list(read_jsonl(paths.data_file(0, "rft.jsonl")))
    assert sum(e["part"] == "refinement" for e in rft) == N_PROMPTS

    summary = iteration_summary(paths, 0)
    m = summary["metrics"]
    assert (m["prompts"], m["responses"], m["negatives"], m["trees"], m["pairs"]) == (10, 30, 10, 10, 10)
    assert m["pass_rate"] == pytest.approx(1 / 3)
    assert m["success_rate"] == 1.0 and m["mean_expansions_per_tree"] == 9
    calls = {row["stage"]: row["engine_calls"] for row in summary["stages"]}
    assert calls == {"sample": 3, "judge": 3, "refine": 12, "assemble": 0}  # per shard: 1, 1, 2 levels x 2

    manifest = read_json(paths.manifest(0, "refine"))
    assert manifest["shards"] == 3 and manifest["counts"]["trees"] == 10
    assert manifest["models"]["refiner"] == "v0 (tiny)" and len(manifest["config_hash"]) == 16


def test_rerunning_a_finished_run_calls_no_engine(tmp_path: Path) -> None:
    paths = make_run(tmp_path)
    LocalExecutor(paths, Provider(ScriptedEngine(judge_fn=judge_fn))).run()
    before = paths.data_file(0, "pairs.jsonl").read_text()
    again = ScriptedEngine(judge_fn=judge_fn)
    LocalExecutor(paths, Provider(again)).run()
    assert again.n_calls == 0
    assert paths.data_file(0, "pairs.jsonl").read_text() == before


class Crash(RuntimeError):
    pass


def test_a_crash_keeps_finished_shards_and_resume_gives_the_clean_result(tmp_path: Path) -> None:
    clean = make_run(tmp_path, run_id="clean")
    LocalExecutor(clean, Provider(ScriptedEngine(judge_fn=judge_fn))).run()

    paths = make_run(tmp_path, run_id="crashy")
    calls = {"refine": 0}

    def refine_then_crash(prompt, response, judgment, index, attempt):
        calls["refine"] += 1
        if calls["refine"] > 12 * 3 + 3:  # crash in the middle of the second refine shard
            raise Crash("worker died")
        return refined(f"{response}/{index}")

    with pytest.raises(Crash):
        LocalExecutor(paths, Provider(ScriptedEngine(judge_fn=judge_fn, refine_fn=refine_then_crash))).run()
    assert paths.shard_done(0, "refine", 0).exists()
    assert not paths.shard_done(0, "refine", 1).exists() and not paths.shard(0, "refine", 1).exists()
    assert not list(paths.stage_dir(0, "refine").glob(".*tmp"))  # no partial file left behind

    resumed = ScriptedEngine(judge_fn=judge_fn)
    LocalExecutor(open_run(paths.root), Provider(resumed)).run()
    assert "sample" not in resumed.kinds()  # finished stages are not recomputed
    assert paths.data_file(0, "pairs.jsonl").read_text() == clean.data_file(0, "pairs.jsonl").read_text()
    assert paths.data_file(0, "rft.jsonl").read_text() == clean.data_file(0, "rft.jsonl").read_text()


def test_a_crash_inside_a_refine_shard_keeps_its_finished_trees(tmp_path: Path) -> None:
    """Trees that finished before the worker died are on disk (``shard_<n>.jsonl.partial``); the
    retry searches only the others and writes the same shard as an uninterrupted run."""

    def early_judge(p, r, i, k):  # Task 1 and Task 2 succeed at depth 1, the rest at depth 2
        if r.startswith("answer 0") or (p in ("Task 1.", "Task 2.") and r.count("/") >= 1):
            return yes()
        return yes() if r.count("/") >= 2 else no()

    clean = make_run(tmp_path, run_id="clean")
    LocalExecutor(clean, Provider(ScriptedEngine(judge_fn=early_judge))).run()

    paths = make_run(tmp_path, run_id="crashy")

    def crash_at_depth_two(prompt, response, judgment, index, attempt):
        if response.count("/") >= 1:  # the first shard's second level: Task 1 and 2 are done by now
            raise Crash("worker died")
        return refined(f"{response}/{index}")

    with pytest.raises(Crash):
        LocalExecutor(
            paths, Provider(ScriptedEngine(judge_fn=early_judge, refine_fn=crash_at_depth_two))
        ).run()
    partial = paths.shard(0, "refine", 0).with_name("shard_00000.jsonl.partial")
    kept = [json.loads(line) for line in partial.read_text().splitlines()]
    assert sorted(k["key"].split("#")[0] for k in kept) == ["p1", "p2"]
    assert all(k["item"]["tree"]["status"] == "success" for k in kept)
    charged = [k["item"]["engine"] for k in kept]  # what the attempt spent up to each kept tree
    assert sum(c["calls"] for c in charged) >= 2  # level 1: the refinements and their judgments
    assert not paths.shard(0, "refine", 0).exists()  # the shard itself is not done

    refined_prompts = []

    def recording(prompt, response, judgment, index, attempt):
        refined_prompts.append(prompt)
        return refined(f"{response}/{index}")

    LocalExecutor(
        open_run(paths.root), Provider(ScriptedEngine(judge_fn=early_judge, refine_fn=recording))
    ).run()
    assert "Task 1." not in refined_prompts and "Task 2." not in refined_prompts  # kept, not searched
    assert "Task 0." in refined_prompts
    for k in range(3):
        assert paths.shard(0, "refine", k).read_text() == clean.shard(0, "refine", k).read_text()
    counts, clean_counts = (read_json(p.shard_done(0, "refine", 0))["counts"] for p in (paths, clean))
    counts.pop("cache_hits"), clean_counts.pop("cache_hits")  # hits of this attempt's judgments only
    assert counts == clean_counts  # trees, successes, expansions ... count the kept trees too
    # the engine counts add what the interrupted attempt spent to what the retry spent: more than
    # an uninterrupted run, which did not search level 1 of the unfinished trees twice
    spent, clean_spent = (read_json(p.shard_done(0, "refine", 0))["engine"] for p in (paths, clean))
    assert spent["requests"] > clean_spent["requests"]
    assert spent["completions"] - sum(c["completions"] for c in charged) > 0  # and the retry's own
    assert not partial.exists()  # served: removed once the shard's output is written
    assert paths.data_file(0, "pairs.jsonl").read_text() == clean.data_file(0, "pairs.jsonl").read_text()


def test_a_crash_after_the_last_tree_retries_without_an_engine(tmp_path: Path, monkeypatch) -> None:
    """Every tree was kept but the shard was not written: the retry writes it from the kept trees,
    with the engine counts the first attempt spent, and loads no model."""
    import workers.stages.refine as refine_stage

    clean = make_run(tmp_path, run_id="clean", shard_size=N_PROMPTS)  # one refine shard
    LocalExecutor(clean, Provider(ScriptedEngine(judge_fn=judge_fn))).run()

    paths = make_run(tmp_path, run_id="crashy", shard_size=N_PROMPTS)
    write = refine_stage.write_jsonl_atomic

    def crash_once(path, records):
        monkeypatch.setattr(refine_stage, "write_jsonl_atomic", write)
        raise Crash("worker died before writing the shard")

    monkeypatch.setattr(refine_stage, "write_jsonl_atomic", crash_once)
    with pytest.raises(Crash):
        LocalExecutor(paths, Provider(ScriptedEngine(judge_fn=judge_fn))).run()
    assert not paths.shard(0, "refine", 0).exists()

    retry = Provider(ScriptedEngine(judge_fn=judge_fn))
    LocalExecutor(open_run(paths.root), retry).run_stage(0, "refine")
    assert retry.engine.n_calls == 0 and retry.versions == []  # no engine asked for
    assert paths.shard(0, "refine", 0).read_text() == clean.shard(0, "refine", 0).read_text()
    engine, clean_engine = (read_json(p.shard_done(0, "refine", 0))["engine"] for p in (paths, clean))
    assert engine == clean_engine  # one attempt searched every tree: charged in full to the kept trees


class CrashOnJudgeEval(ScriptedEngine):
    """Answers IFEval prompts; dies at the first judge-evaluation request while ``armed``."""

    def __init__(self, ifeval_prompts: set[str], armed: bool, **kwargs):
        super().__init__(**kwargs)
        self.ifeval_prompts, self.armed, self.ifeval_requests = ifeval_prompts, armed, 0

    def generate(self, requests):
        for r in requests:
            if r.messages[-1]["content"] in self.ifeval_prompts:
                self.ifeval_requests += 1
            elif self.armed:
                raise Crash("worker died while judging the held-out pairs")
        return super().generate(requests)


@pytest.mark.parametrize("legacy_keys", [False, True])
def test_a_crash_inside_the_eval_stage_keeps_the_versions_already_evaluated(
    tmp_path: Path, legacy_keys: bool
) -> None:
    """IFEval of a version is kept as it ends; the retry evaluates only the judge and writes the same
    shard. An attempt interrupted under the keys of an earlier release (kind and model path) is
    resumed the same way."""
    from shared.evaluation.ifeval import load_ifeval_prompts

    prompts = {item["prompt"] for item in load_ifeval_prompts(limit=3)}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"input": f"Say hi {i}.", "output_1": "hi", "output_2": "bye", "label": 1}) + "\n"
            for i in range(3)
        )
    )
    overrides = {
        "stages": ["eval"],
        "evaluation": {"ifeval_limit": 3, "max_new_tokens": 8, "judge_data": str(pairs)},
    }
    clean = make_run(tmp_path, run_id="clean", **overrides)
    first = CrashOnJudgeEval(prompts, armed=False, judge_fn=yes)
    LocalExecutor(clean, Provider(first)).run_stage(0, "eval")
    assert first.ifeval_requests == 3  # the engine tells IFEval requests apart

    paths = make_run(tmp_path, run_id="crashy", **overrides)
    with pytest.raises(Crash):
        LocalExecutor(paths, Provider(CrashOnJudgeEval(prompts, armed=True, judge_fn=yes))).run_stage(
            0, "eval"
        )
    partial = paths.shard(0, "eval", 0).with_name("shard_00000.jsonl.partial")
    assert [json.loads(line)["key"] for line in partial.read_text().splitlines()] == ["ifeval:v0"]
    if legacy_keys:
        partial.write_text(partial.read_text().replace('"ifeval:v0"', '"IFEval:v0 (tiny)"'))

    retry = CrashOnJudgeEval(prompts, armed=False, judge_fn=yes)
    LocalExecutor(open_run(paths.root), Provider(retry)).run_stage(0, "eval")
    assert retry.ifeval_requests == 0  # the kept IFEval of v0 was not run again
    assert paths.shard(0, "eval", 0).read_text() == clean.shard(0, "eval", 0).read_text()
    metrics = [read_json(p.manifest(0, "eval"))["metrics"] for p in (paths, clean)]
    assert metrics[0] == metrics[1] and metrics[0]["ifeval"][0]["version"] == "v0"
    assert not partial.exists()


def test_a_partial_shard_of_another_config_or_a_cut_line_is_not_reused(tmp_path: Path) -> None:
    from shared.runtime.partial import PartialShard

    out = tmp_path / "shard_00000.jsonl"
    first = PartialShard(out, "hash-a:v0")
    first.add("p0#1", {"x": 1})
    with first.path.open("a") as f:
        f.write('{"key": "p1#1", "fingerprint": "hash-a:v0", "item": {"x"')  # cut by a crash
    again = PartialShard(out, "hash-a:v0")
    assert again.load() == {"p0#1": {"x": 1}}
    again.add("p2#1", {"x": 2})  # starts on a line of its own despite the cut one
    assert PartialShard(out, "hash-a:v0").load() == {"p0#1": {"x": 1}, "p2#1": {"x": 2}}
    assert PartialShard(out, "hash-b:v0").load() == {}  # another config or model version: ignored
    assert not out.exists() and first.path.name == "shard_00000.jsonl.partial"
    again.remove()
    assert not first.path.exists() and PartialShard(out, "hash-a:v0").load() == {}


def test_changed_settings_on_an_existing_run_are_refused(tmp_path: Path) -> None:
    paths = make_run(tmp_path)
    LocalExecutor(paths, Provider(ScriptedEngine(judge_fn=judge_fn))).run()
    stored = read_json(paths.config)
    stored["config"]["search"]["branching"] = 2
    paths.config.write_text(json.dumps(stored))
    with pytest.raises(ConfigChangedError, match="start a new run"):
        LocalExecutor(paths, Provider(ScriptedEngine(judge_fn=judge_fn))).run()


def test_stages_can_be_run_in_part(tmp_path: Path) -> None:
    paths = make_run(tmp_path, stages=["sample", "judge"])
    engine = ScriptedEngine(judge_fn=judge_fn)
    LocalExecutor(paths, Provider(engine)).run()
    assert set(engine.kinds()) == {"sample", "judge"}
    assert not paths.stage_dir(0, "refine").exists()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"serach": {}}, "serach: unknown key"),
        ({"search": {"branching": 0}}, "search.branching: Input should be greater than or equal to 1"),
        ({"search": {"strategy": "astar"}}, "search.strategy"),
        ({"judge": {"negatives_per_prompt": "some"}}, "judge.negatives_per_prompt"),
        ({"stages": ["judge", "sample"]}, "pipeline order"),
        ({"actor": {"model": "tiny", "engine": "tgi"}}, "actor.engine"),
        ({"refiner": None}, "refiner"),
    ],
)
def test_invalid_configs_name_the_field(tmp_path: Path, overrides, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_file(write_config(tmp_path, **overrides))
    assert fragment in str(info.value)


def test_a_malformed_prompt_file_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "ok"}\n{"prompt": 3}\n\n{oops\n')
    config = load_config_file(write_config(tmp_path))
    with pytest.raises(PromptFileError) as info:
        create_run(config, tmp_path / "runs", "bad")
    assert [n for n, _ in info.value.problems] == [2, 4]
    assert not (tmp_path / "runs" / "bad").exists()


def test_missing_files_and_existing_runs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.yaml")
    config = load_config_file(write_config(tmp_path, prompts="missing.jsonl"))
    with pytest.raises(ConfigError, match="prompts: file .*missing.jsonl does not exist"):
        create_run(config, tmp_path / "runs")
    make_run(tmp_path, run_id="same")
    with pytest.raises(ConfigError, match="--resume"):
        make_run(tmp_path, run_id="same")


def test_relative_paths_are_resolved_against_the_config_file(tmp_path: Path) -> None:
    config = load_config_file(write_config(tmp_path, actor={"model": "models/actor"}))
    assert config.prompts == str((tmp_path / "prompts.jsonl").resolve())
    assert config.actor.model == str((tmp_path / "models" / "actor").resolve())
    assert config.refiner.model == "tiny"  # built-in names stay names


def test_verifier_then_llm_judges_prompts_with_metadata_programmatically(tmp_path: Path) -> None:
    # two prompts carry IFEval metadata (lowercase), two do not
    rows = [
        {
            "id": "m0",
            "prompt": "Describe tea. Use only lowercase letters.",
            "instruction_id_list": ["change_case:english_lowercase"],
            "kwargs": [{}],
        },
        {
            "id": "m1",
            "prompt": "Describe coffee. Use only lowercase letters.",
            "instruction_id_list": ["change_case:english_lowercase"],
            "kwargs": [{}],
        },
        {"id": "p0", "prompt": "Task without metadata."},
        {"id": "p1", "prompt": "Another task without metadata."},
    ]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config_file(
        write_config(tmp_path, judge={"votes": 3, "backend": "verifier_then_llm", "agreement_sample": 8})
    )
    paths = create_run(config, tmp_path / "runs", "verifier")
    # answers 0 are lowercase; the LLM judge says Yes to everything
    engine = ScriptedEngine(
        judge_fn=yes, sample_fn=lambda prompt, i: "all lowercase here" if i == 0 else f"Capitalised {i}"
    )
    LocalExecutor(paths, Provider(engine)).run_stage(0, "sample")
    LocalExecutor(paths, Provider(engine)).run_stage(0, "judge")
    judged = {row["id"]: row for row in read_jsonl(paths.shard(0, "judge", 0))}
    assert [r["label"] for r in judged["m0"]["responses"]] == [1, 0, 0]  # the verifier's verdicts
    assert [r["label"] for r in judged["p0"]["responses"]] == [1, 1, 1]  # the scripted LLM's
    assert "change_case:english_lowercase" in judged["m0"]["responses"][1]["judgments"][0]
    counts = read_json(paths.manifest(0, "judge"))["counts"]
    # the LLM (always Yes) agrees with the verifier on the 2 lowercase answers out of 6 verifiable ones
    assert (counts["agreement_n"], counts["agreement_agree"]) == (6, 2)


class RewriteAwareEngine(ScriptedEngine):
    """The scripted engine, plus answers to IOPO rewrite requests (whose template also quotes a
    Prompt and an Output, so the base class would take them for judge prompts)."""

    def __init__(self, rewrite_fn, **kwargs):
        super().__init__(**kwargs)
        self.rewrite_fn = rewrite_fn
        self.rewrite_requests = []

    def generate(self, requests):
        if any("Final Rewritten Prompt" in r.messages[-1]["content"] for r in requests):
            self.calls.append(list(requests))
            self.rewrite_requests.extend(requests)
            return [[self.rewrite_fn(r)] for r in requests]
        return super().generate(requests)


@pytest.mark.parametrize("backend", ["verifier_then_llm", "llm"])
def test_iopo_groups_use_the_verifier_where_prompts_carry_metadata(tmp_path: Path, backend: str) -> None:
    """m0 has IFEval metadata: its x' is written by program and verified by the checker (no
    rewrite request, no LLM judging of x'); p0 has none: the refiner rewrites and judges it. With
    the llm backend both go through the refiner, as in the paper."""
    words_40 = "Answer with at least 40 words."
    rows = [
        {
            "id": "m0",
            "prompt": f"Write a FAQ about tea. {words_40}",
            "instruction_id_list": ["length_constraints:number_words"],
            "kwargs": [{"num_words": 40, "relation": "at least"}],
        },
        {"id": "p0", "prompt": "Task without metadata."},
    ]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    long_answer = " ".join(["Tea grows on hills and people drink it warm"] * 6)

    def judge(prompt, response, i, k):
        if prompt.startswith("NEW"):  # under the refiner's x': the negative passes, the refinement fails
            return no() if "/" in response or response == long_answer else yes()
        return yes() if "/" in response or response == long_answer else no()

    def refine(prompt, response, judgment, index, attempt):
        return refined(long_answer if "FAQ" in prompt else f"{response}/{index}")

    def rewrite(request):  # x' = "NEW " + x: keeps the task, as a rewrite must
        x = request.messages[0]["content"].split("[Prompt]\n")[1].split("\n[End of Prompt]")[0]
        return f"Reflection on how to rewrite the Prompt: swap.\nFinal Rewritten Prompt: [[start]] NEW {x} [[end]]"  # noqa: E501

    engine = RewriteAwareEngine(
        rewrite,
        judge_fn=judge,
        refine_fn=refine,
        sample_fn=lambda prompt, i: f"short answer {i}",
    )
    config = load_config_file(
        write_config(
            tmp_path,
            judge={"votes": 3, "backend": backend},
            search={"branching": 1, "beam": 1, "max_depth": 1},
            stages=["sample", "judge", "refine", "assemble", "iopo_groups"],
            iopo={"rewrites": 1},
        )
    )
    paths = create_run(config, tmp_path / "runs", backend)
    LocalExecutor(paths, Provider(engine)).run()

    groups = {g["key"].split("#")[0]: g for g in read_jsonl(paths.shard(0, "iopo_groups", 0))}
    counts = read_json(paths.manifest(0, "iopo_groups"))["counts"]
    assert set(groups) == {"m0", "p0"} and counts["verified"] == 2
    assert groups["p0"]["x2"] == "NEW Task without metadata." and groups["p0"]["x2_source"] == "refiner"
    m0 = groups["m0"]
    assert m0["y1"] == long_answer and m0["y2"].startswith("short answer")
    if backend == "llm":
        assert (
            m0["x2"] == f"NEW {rows[0]['prompt']}"
            and m0["x2_source"] == "refiner"
            and "x2_metadata" not in m0
        )
        assert len(engine.rewrite_requests) == 2 and "candidates_programmatic" not in counts
        return
    assert m0["x2_source"] == "verifier" and m0["x2"].startswith("Write a FAQ about tea.")
    assert words_40 not in m0["x2"]
    meta = m0["x2_metadata"]
    assert meta["instruction_id_list"] == ["length_constraints:number_words"]
    assert meta["kwargs"][0]["relation"] == "less than" and 3 < meta["kwargs"][0]["num_words"] <= 54
    assert counts["candidates_programmatic"] == 1
    assert len(engine.rewrite_requests) == 1  # only p0 asked the refiner
    assert "Final Rewritten Prompt" in engine.rewrite_requests[0].messages[0]["content"]
    assert "Task without metadata." in engine.rewrite_requests[0].messages[0]["content"]
    judged_x2 = {p for (p, _r) in engine.judged}
    assert m0["x2"] not in judged_x2 and groups["p0"]["x2"] in judged_x2  # the checker judged m0's x'
