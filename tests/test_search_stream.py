"""The streamed tree search gives the batched search's trees, whatever order the engine finishes in.

The engines here answer like vLLM with per-request seeds: a completion is a function of the
request's seed and its index only (never of the batch or the call order), so both searches must
build identical trees. One of them finishes requests in a random order and in random pieces, as a
continuous-batching engine does.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from scripted import FINAL, ScriptedEngine, no, refined, split_judge_prompt

from shared.config import JudgeConfig, SearchConfig
from shared.engine import GenerationRequest, MeteredEngine
from shared.judging import Judge
from shared.search import SearchRoot, Tree, search_trees
from shared.streaming import BatchedStream, open_stream, wait
from shared.templates import REFINE_INSTRUCTION


def _draw(seed: int | None, index: int, salt: str) -> float:
    digest = hashlib.sha256(f"{seed}:{index}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class SeededEngine:
    """Answers depend on (request seed, completion index) only, like a seeded sampler.

    Refinements: some have no markers (parse retries), and children often repeat a text (the same
    pair judged for two children or two trees). Judgments: yes, no or unparsable (ties happen).
    """

    unparsable: float = 0.25
    echo: float = 0.1  # parsed refinements that are the format's placeholder (search.guard refuses them)
    pass_rate: float = 0.3
    invalid: float = 0.15
    variants: int = 4
    calls: list[list[GenerationRequest]] = field(default_factory=list)

    def answer(self, request: GenerationRequest) -> list[str]:
        last = request.messages[-1]["content"]
        out = []
        for i in range(request.n):
            if last == REFINE_INSTRUCTION:
                _, response = split_judge_prompt(request.messages[0]["content"])
                if _draw(request.seed, i, "parse") < self.unparsable:
                    out.append("I would refine it, but here are no markers.")
                elif _draw(request.seed, i, "echo") < self.echo:
                    out.append(refined("The complete refined Output."))
                else:
                    out.append(refined(f"{response}/{int(_draw(request.seed, i, 'text') * self.variants)}"))
            else:
                split_judge_prompt(last)  # a judge prompt, or this engine is misused
                u = _draw(request.seed, i, "vote")
                if u < self.invalid:
                    out.append("I cannot tell.")
                else:
                    verdict = "Yes" if u < self.invalid + self.pass_rate else "No"
                    out.append(f"Step-by-step verification: checked.\n{FINAL} {verdict}")
        return out

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        self.calls.append(list(requests))
        return [self.answer(r) for r in requests]


@dataclass
class ShuffledStream:
    """Finishes a random, sometimes empty, subset of what is in flight on each poll."""

    engine: SeededEngine
    rng: random.Random
    inflight: list[tuple[object, GenerationRequest]] = field(default_factory=list)
    polls: int = 0
    priorities: list[tuple[object, int]] = field(default_factory=list)

    def submit(self, tag, request, priority: int = 0) -> None:
        self.inflight.append((tag, request))
        self.priorities.append((tag, priority))

    def poll(self):
        self.polls += 1
        if not self.inflight or self.rng.random() < 0.2:
            return []
        self.rng.shuffle(self.inflight)
        k = self.rng.randint(1, len(self.inflight))
        done, self.inflight = self.inflight[:k], self.inflight[k:]
        return [(tag, self.engine.answer(request)) for tag, request in done]

    @property
    def pending(self) -> int:
        return len(self.inflight)

    def close(self) -> None:
        self.inflight = []


@dataclass
class ShuffledEngine(SeededEngine):
    order_seed: int = 0
    streams: list[ShuffledStream] = field(default_factory=list)

    def open_stream(self) -> ShuffledStream:
        stream = ShuffledStream(self, random.Random(self.order_seed))
        self.streams.append(stream)
        return stream


def roots(n: int, shared_prompt: bool = False) -> list[SearchRoot]:
    return [
        SearchRoot(
            key=f"t{i}",
            prompt="one prompt" if shared_prompt else f"prompt {i % 5}",
            response=f"neg {i % 3}",
            judgment=no(),
        )
        for i in range(n)
    ]


def written(trees: Sequence[Tree]) -> list[dict]:
    """The trees as stage 3 writes them (the key stands in for the prompt id)."""
    return [t.row(t.key).as_record() for t in trees]


def run(engine, cfg: SearchConfig, n_trees: int, votes: int, seed: int = 0, shared_prompt: bool = False):
    judge = Judge(engine, votes=votes, tie_retries=cfg.tie_retries, seed=seed)
    trees = search_trees(roots(n_trees, shared_prompt), engine, judge, cfg, seed=seed)
    return written(trees), judge


CONFIGS = [
    {"strategy": "bfs"},
    {"strategy": "dfs"},
    {"strategy": "bfs", "branching": 2, "beam": 1, "max_depth": 2},
    {"strategy": "dfs", "branching": 4, "beam": 3, "max_depth": 3, "budget": 11},
    {"strategy": "bfs", "branching": 3, "beam": 3, "max_depth": 4, "budget": 20, "parse_retries": 0},
    {"strategy": "dfs", "branching": 1, "beam": 1, "max_depth": 5, "tie_retries": 0},
    {"strategy": "bfs", "success_threshold": 0.0, "parse_retries": 5},
    {"strategy": "dfs", "success_threshold": 0.9, "accept_unterminated": False},
    {"strategy": "bfs", "guard": {}},
    {"strategy": "dfs", "branching": 2, "parse_retries": 1, "guard": {"min_words": 0, "min_overlap": 0.9}},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
@pytest.mark.parametrize("votes", [2, 3, 5])
def test_streamed_trees_equal_batched_trees_in_any_finishing_order(cfg, votes) -> None:
    for seed in range(3):
        batched, _ = run(SeededEngine(), SearchConfig(pipeline=False, **cfg), 7, votes, seed)
        on_batches, _ = run(SeededEngine(), SearchConfig(pipeline=True, **cfg), 7, votes, seed)
        shuffled_engine = ShuffledEngine(order_seed=seed)
        shuffled, _ = run(shuffled_engine, SearchConfig(pipeline=True, **cfg), 7, votes, seed)
        assert on_batches == batched
        assert shuffled == batched
        assert shuffled_engine.streams and shuffled_engine.streams[0].pending == 0
    if "guard" in cfg:  # the guard refused some refinements, in both searches alike
        assert sum(t["unfaithful"] for t in batched) > 0
    statuses = {t["status"] for t in batched}
    assert statuses  # the configs above cover success, exhaustion, budget and empty trees together


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_each_tree_is_reported_once_when_it_finishes_and_a_search_of_the_rest_grows_the_same_trees(
    cfg,
) -> None:
    """``on_tree_done`` (what the refine stage keeps on disk) sees every tree exactly once, finished
    and never changed afterwards; searching only the trees not yet kept grows the same trees (a
    tree's requests are seeded by its key, not by its neighbours), batched or streamed."""
    for engine_of, pipeline in ((SeededEngine, False), (SeededEngine, True), (ShuffledEngine, True)):
        search_cfg = SearchConfig(pipeline=pipeline, **cfg)
        engine = engine_of()
        judge = Judge(engine, votes=3, tie_retries=search_cfg.tie_retries, seed=1)
        reported: list[tuple[str, dict]] = []
        trees = search_trees(
            roots(9),
            engine,
            judge,
            search_cfg,
            seed=1,
            on_tree_done=lambda t, seen=reported: seen.append((t.key, written([t])[0])),
        )
        assert sorted(key for key, _ in reported) == sorted(t.key for t in trees)  # each once
        final = {row["key"]: row for row in written(trees)}
        assert all(row == final[key] and row["status"] != "running" for key, row in reported)
        rest = [r for r in roots(9) if r.key not in {"t0", "t4", "t7"}]
        again = search_trees(
            rest,
            engine_of(),
            Judge(engine_of(), votes=3, tie_retries=search_cfg.tie_retries, seed=1),
            search_cfg,
            seed=1,
        )
        assert written(again) == [final[r.key] for r in rest]


def test_streamed_trees_are_reported_before_the_search_ends() -> None:
    engine = ShuffledEngine(order_seed=3)
    cfg = SearchConfig(pipeline=True, strategy="bfs", branching=2, beam=1, max_depth=3)
    polls_at_report: list[int] = []
    judge = Judge(engine, votes=3, tie_retries=cfg.tie_retries, seed=0)
    search_trees(
        roots(12),
        engine,
        judge,
        cfg,
        seed=0,
        on_tree_done=lambda t: polls_at_report.append(engine.streams[0].polls),
    )
    assert len(polls_at_report) == 12
    assert min(polls_at_report) < engine.streams[0].polls  # kept as it finished, not at the end


def test_the_seeded_engine_exercises_every_path() -> None:
    """The equivalence above means something only if retries, ties, drops and successes happen."""
    records = []
    for cfg in CONFIGS:
        trees, _ = run(SeededEngine(), SearchConfig(pipeline=True, **cfg), 7, 2)
        records += trees
    assert {t["status"] for t in records} >= {"success", "exhausted", "budget"}
    assert sum(t["parse_failures"] for t in records) > 0
    assert sum(t["dropped_ties"] for t in records) > 0
    assert sum(t["dropped_unparsed"] for t in records) > 0
    assert any(n["vote"].get("invalid") for t in records for n in t["nodes"][1:])


def test_identical_pairs_are_judged_once_while_in_flight() -> None:
    """Children with the same text under the same prompt share one judgment (same as batched)."""
    cfg = SearchConfig(pipeline=True, strategy="bfs", branching=4, beam=2, max_depth=2)
    engine = ShuffledEngine(variants=2, unparsable=0.0)
    trees, judge = run(engine, cfg, 6, 3, shared_prompt=True)
    batched, _ = run(
        SeededEngine(variants=2, unparsable=0.0),
        SearchConfig(pipeline=False, **cfg.model_dump(exclude={"pipeline"})),
        6,
        3,
        shared_prompt=True,
    )
    assert trees == batched
    children = {(t["prompt"], n["response"]) for t in trees for n in t["nodes"][1:]}
    # every distinct pair is in the cache exactly once, and far fewer pairs than children exist
    assert len(children) <= len(judge.cache)
    assert sum(len(t["nodes"]) - 1 for t in trees) > len(children)


@pytest.mark.parametrize("strategy", ["bfs", "dfs"])
def test_engine_calls_do_not_grow_with_the_number_of_trees_on_a_batch_engine(strategy) -> None:
    """Each wait is one call; a tree's step is a chain of at most (parse_retries + 1) refinement
    waves and (tie_retries + 1) judging waves, and all trees start together: the calls are bounded
    by the steps times that chain, whatever the number of trees."""
    cfg = SearchConfig(pipeline=True, strategy=strategy, parse_retries=1, tie_retries=1)
    steps = cfg.max_depth if strategy == "bfs" else sum(cfg.beam**d for d in range(cfg.max_depth))
    bound = steps * (cfg.parse_retries + 1 + cfg.tie_retries + 1)
    calls = {}
    for n_trees in (1, 8, 40, 160):
        engine = SeededEngine()
        run(engine, cfg, n_trees, 2)
        calls[n_trees] = len(engine.calls)
    assert max(calls.values()) <= bound, calls
    assert calls[160] >= calls[1]  # (more trees fill the same waves; they add none beyond the bound)


def test_stream_waits_mix_refinements_and_judgments_in_one_call() -> None:
    """On a batch engine the streamed search sends a retry and the judging of parsed children together."""
    engine = SeededEngine(unparsable=0.5)
    run(engine, SearchConfig(pipeline=True, strategy="bfs", max_depth=1), 6, 3)
    kinds = [
        {"refine" if r.messages[-1]["content"] == REFINE_INSTRUCTION else "judge" for r in call}
        for call in engine.calls
    ]
    assert {"refine", "judge"} in kinds


def test_metered_engine_counts_a_stream_of_a_batch_engine_per_call() -> None:
    engine = SeededEngine()
    metered = MeteredEngine(engine)
    run(metered, SearchConfig(pipeline=True), 5, 3)
    assert metered.stats.calls == len(engine.calls)
    assert metered.stats.requests == sum(len(c) for c in engine.calls)
    assert metered.stats.completions == sum(r.n for c in engine.calls for r in c)


def test_metered_engine_counts_a_native_stream_as_one_call() -> None:
    engine = ShuffledEngine()
    metered = MeteredEngine(engine)
    trees, _ = run(metered, SearchConfig(pipeline=True), 5, 3)
    assert metered.stats.calls == 1
    assert metered.stats.requests > 5
    batched, _ = run(SeededEngine(), SearchConfig(pipeline=False), 5, 3)
    assert trees == batched


def test_metered_stream_refuses_a_wrong_number_of_completions() -> None:
    class Short(SeededEngine):
        def generate(self, requests):
            return [out[:-1] for out in super().generate(requests)]

    with pytest.raises(RuntimeError, match="completions"):
        run(MeteredEngine(Short()), SearchConfig(pipeline=True), 2, 3)


def test_batched_stream_runs_everything_submitted_as_one_call() -> None:
    engine = ScriptedEngine()
    with open_stream(engine) as stream:
        assert isinstance(stream, BatchedStream)
        for i in range(5):
            stream.submit(i, GenerationRequest(messages=[{"role": "user", "content": f"q{i}"}], n=2))
        assert stream.pending == 5
        done = wait(stream)
        assert [tag for tag, _ in done] == list(range(5)) and all(len(t) == 2 for _, t in done)
        assert stream.pending == 0 and wait(stream) == []
    assert engine.n_calls == 1


def test_a_judge_that_needs_no_engine_is_used_inline() -> None:
    """The verifier-style judge: children are judged as they are parsed; only refinements stream."""
    from shared.judging import JudgeStream, Judgment
    from shared.verdict import Verdict
    from shared.voting import Vote

    class Lengthy:
        """Judges by a rule: ``begin`` always answers, so nothing but refinements is streamed."""

        def judge(self, items: list[tuple[str, str]]) -> list[Judgment]:
            out = []
            for prompt, response in items:
                label = Verdict.PASS if response.count("/") >= 2 else Verdict.FAIL
                out.append(
                    Judgment(prompt, response, ("v",), Vote(labels=(label,), label=label, kept_index=0), 1)
                )
            return out

        def stream(self) -> JudgeStream:
            return self

        def begin(self, prompt: str, response: str) -> Judgment:
            (judgment,) = self.judge([(prompt, response)])
            return judgment

        def resume(self, prompt: str, response: str, texts: list[str], round_no: int) -> Judgment:
            raise AssertionError("a rule-based judge never submits a request")

    cfg = {"strategy": "bfs", "branching": 2}
    engine = ShuffledEngine(unparsable=0.2)
    streamed = written(search_trees(roots(5), engine, Lengthy(), SearchConfig(pipeline=True, **cfg), 0))
    batched_search = SearchConfig(pipeline=False, **cfg)
    batched = written(search_trees(roots(5), SeededEngine(unparsable=0.2), Lengthy(), batched_search, 0))
    assert streamed == batched
    assert engine.streams and not engine.calls  # refinements went through the stream, nothing batched
    assert {t["status"] for t in streamed} == {"success"}


def test_a_routing_judge_falls_back_to_the_batched_search() -> None:
    """verifier_then_llm routes per item and may call the engine inside judge(): not streamable."""
    from shared.judges import build_judge

    engine = SeededEngine()
    judge = build_judge(JudgeConfig(votes=3, backend="verifier_then_llm"), engine, seed=0, tie_retries=3)
    streamed = written(search_trees(roots(3), engine, judge, SearchConfig(pipeline=True), 0))
    assert judge.stream() is None
    kinds = [
        {"refine" if r.messages[-1]["content"] == REFINE_INSTRUCTION else "judge" for r in c}
        for c in engine.calls
    ]
    # the batched search's pattern: every call holds one kind, refinements first
    assert all(len(k) == 1 for k in kinds) and kinds[0] == {"refine"} and {"judge"} in kinds
    assert len(streamed) == 3


def test_pipeline_is_left_out_of_the_stage_hash() -> None:
    from shared.config import RunConfig

    base = {"prompts": "p.jsonl", "actor": {"model": "tiny"}, "refiner": {"model": "tiny"}}
    on = RunConfig.model_validate(base | {"search": {"pipeline": True}})
    off = RunConfig.model_validate(base | {"search": {"pipeline": False}})
    other = RunConfig.model_validate(base | {"search": {"branching": 2}})
    assert on.stage_hash("refine") == off.stage_hash("refine")
    assert on.stage_hash("refine") != other.stage_hash("refine")


@dataclass
class SlotStream:
    """A scheduling engine in miniature: ``slots`` requests run at once, each for ``ticks`` polls
    (a refinement 3, a judgment 1, like their token budgets); what cannot start waits and starts
    by (priority, arrival) when ``by_priority``, by arrival otherwise (vLLM's two policies)."""

    engine: SeededEngine
    slots: int
    by_priority: bool
    waiting: list[tuple[int, int, object, GenerationRequest]] = field(default_factory=list)
    running: list[list] = field(default_factory=list)  # [polls left, tag, request]
    arrivals: int = 0
    polls: int = 0
    underfilled: int = 0  # polls that ran fewer than ``slots`` requests

    def submit(self, tag, request, priority: int = 0) -> None:
        self.waiting.append((priority if self.by_priority else 0, self.arrivals, tag, request))
        self.arrivals += 1

    def poll(self):
        self.waiting.sort(key=lambda item: item[:2])
        while self.waiting and len(self.running) < self.slots:
            _, _, tag, request = self.waiting.pop(0)
            judging = request.messages[-1]["content"] != REFINE_INSTRUCTION
            self.running.append([1 if judging else 3, tag, request])
        self.polls += 1
        self.underfilled += len(self.running) < self.slots
        for item in self.running:
            item[0] -= 1
        done = [(tag, self.engine.answer(request)) for left, tag, request in self.running if left == 0]
        self.running = [item for item in self.running if item[0] > 0]
        return done

    @property
    def pending(self) -> int:
        return len(self.waiting) + len(self.running)

    def close(self) -> None:
        self.waiting, self.running = [], []


@dataclass
class SlotEngine(SeededEngine):
    slots: int = 6
    by_priority: bool = True
    streams: list[SlotStream] = field(default_factory=list)

    def open_stream(self) -> SlotStream:
        self.streams.append(SlotStream(self, self.slots, self.by_priority))
        return self.streams[-1]


def test_streamed_requests_carry_their_steps_priority() -> None:
    """Lower runs first: a tree's step ``s`` refines at ``2s`` and judges at ``2s + 1`` (retries and
    tie rounds included), so the trees furthest behind are served first when the engine queues."""
    cfg = SearchConfig(pipeline=True, strategy="bfs", branching=3, beam=2, max_depth=3)
    engine = ShuffledEngine(order_seed=1)
    run(engine, cfg, 9, 2)
    submitted = engine.streams[0].priorities
    refines = [(tag, p) for tag, p in submitted if tag[0] == "refine"]
    judges = [(tag, p) for tag, p in submitted if tag[0] == "judge"]
    for (_, step, index, _), priority in refines:
        assert priority == 2 * step.number == 2 * step.expansions[index].node.depth  # BFS: step = depth
    assert {p for _, p in refines} == {0, 2, 4}  # three levels
    assert {p for _, p in judges} == {1, 3, 5}
    rounds: dict[str, set[int]] = {}
    for (_, key, _), priority in judges:
        rounds.setdefault(key, set()).add(priority)
    assert all(len(p) == 1 for p in rounds.values())  # a pair's tie rounds keep its priority
    assert any(round_no > 0 for (_, _, round_no), _ in judges)  # ties were re-judged here


@pytest.mark.parametrize("cfg", CONFIGS[:4], ids=[str(i) for i in range(4)])
def test_the_queue_order_changes_no_tree(cfg) -> None:
    """An engine that runs a few requests at a time and queues the rest, by priority or by arrival,
    finishes them in a different order; the trees are the batched search's either way."""
    for seed in range(2):
        batched, _ = run(SeededEngine(), SearchConfig(pipeline=False, **cfg), 12, 3, seed)
        for by_priority in (True, False):
            engine = SlotEngine(slots=5, by_priority=by_priority)
            streamed, _ = run(engine, SearchConfig(pipeline=True, **cfg), 12, 3, seed)
            assert streamed == batched
            assert engine.streams[0].underfilled < engine.streams[0].polls  # the queue was used


def test_the_scheduling_policy_is_left_out_of_the_stage_hash() -> None:
    """It orders requests in the engine's queue, never changes one: finished stages stay valid."""
    from shared.config import RunConfig

    base = {"prompts": "p.jsonl", "actor": {"model": "tiny"}}
    runs = {
        policy: RunConfig.model_validate(
            base | {"refiner": {"model": "tiny", "engine": "vllm", "vllm": {"scheduling_policy": policy}}}
        )
        for policy in ("priority", "fcfs")
    }
    refiner = {"model": "tiny", "engine": "vllm", "vllm": {"kv_cache_gb": 3}}
    bigger = RunConfig.model_validate(base | {"refiner": refiner})
    for stage_name in ("judge", "refine"):
        assert runs["priority"].stage_hash(stage_name) == runs["fcfs"].stage_hash(stage_name)
        assert runs["priority"].stage_hash(stage_name) != bigger.stage_hash(stage_name)
