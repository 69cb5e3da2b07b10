"""Batched judging: one engine call for many responses, a cache, tie re-judging in batched rounds."""

from scripted import ScriptedEngine, no, yes

from shared.judging import Judge, JudgmentCache
from shared.records import JudgedResponseRow
from shared.verdict import Verdict


def alternating(p, r, i, k):
    return yes() if i % 2 == 0 else no()


def test_many_responses_are_judged_in_one_call_with_votes_samples_each() -> None:
    engine = ScriptedEngine(judge_fn=lambda p, r, i, k: yes() if "good" in r else no())
    judge = Judge(engine, votes=5)
    items = [("x", f"good {i}") for i in range(10)] + [("x", f"bad {i}") for i in range(10)]
    results = judge.judge(items)
    assert engine.n_calls == 1
    assert len(engine.calls[0]) == 20 and all(r.n == 5 for r in engine.calls[0])
    assert [j.label for j in results] == [Verdict.PASS] * 10 + [Verdict.FAIL] * 10
    assert all(len(j.texts) == 5 for j in results)


def test_judge_requests_use_the_configured_sampling_and_distinct_seeds() -> None:
    engine = ScriptedEngine()
    Judge(engine, votes=3, temperature=0.7, top_p=1.0, max_new_tokens=99, seed=1).judge(
        [("x", "a"), ("x", "b")]
    )
    req = engine.calls[0]
    assert {(r.temperature, r.top_p, r.max_new_tokens, r.n) for r in req} == {(0.7, 1.0, 99, 3)}
    assert req[0].seed != req[1].seed


def test_duplicates_are_judged_once_and_the_cache_answers_later_calls() -> None:
    engine = ScriptedEngine(judge_fn=yes)
    cache = JudgmentCache()
    judge = Judge(engine, votes=3, cache=cache)
    first = judge.judge([("x", "a"), ("x", "a"), ("x", "b")])
    assert len(engine.calls[0]) == 2
    assert first[0] is first[1]
    again = judge.judge([("x", "b"), ("x", "a")])
    assert engine.n_calls == 1  # nothing new to judge: no engine call at all
    assert again == [first[2], first[0]]
    assert cache.hits == 2


def test_same_text_under_another_prompt_is_not_a_cache_hit() -> None:
    engine = ScriptedEngine(judge_fn=yes)
    judge = Judge(engine, votes=1)
    judge.judge([("x", "a")])
    judge.judge([("y", "a")])
    assert engine.n_calls == 2


def test_stage2_judge_drops_ties_without_rejudging() -> None:
    engine = ScriptedEngine(judge_fn=alternating)
    (j,) = Judge(engine, votes=4, tie_retries=0).judge([("x", "a")])
    assert not j.decided and j.label is None and j.kept is None
    assert engine.n_calls == 1


def test_ties_are_rejudged_in_batched_rounds_then_dropped() -> None:
    # "late" is tied twice, then decided; "never" is always tied; "clear" is decided at once.
    def fn(p, r, i, k):
        if r == "clear" or (r == "late" and k >= 2):
            return yes()
        return alternating(p, r, i, k)

    engine = ScriptedEngine(judge_fn=fn)
    clear, late, never = Judge(engine, votes=2, tie_retries=3).judge(
        [("x", "clear"), ("x", "late"), ("x", "never")]
    )
    assert [len(c) for c in engine.calls] == [3, 2, 2, 1]  # one call per round, only tied items
    assert (clear.label, clear.rounds) == (Verdict.PASS, 1)
    assert (late.label, late.rounds) == (Verdict.PASS, 3)
    assert never.label is None and never.rounds == 4
    seeds = [c[0].seed for c in engine.calls[1:]]
    assert len(set(seeds)) == len(seeds)  # each round samples afresh


def test_invalid_judgments_count_for_nothing() -> None:
    engine = ScriptedEngine(judge_fn=lambda p, r, i, k: "I cannot tell" if i < 3 else no())
    (j,) = Judge(engine, votes=4).judge([("x", "a")])
    assert j.label is Verdict.FAIL and j.value == 0.0 and j.vote.n_invalid == 3
    assert j.kept == no()


def test_record_round_trip() -> None:
    engine = ScriptedEngine(judge_fn=lambda p, r, i, k: yes() if i else no())
    (j,) = Judge(engine, votes=3, seed=4).judge([("x", "a")])
    back = JudgedResponseRow.from_record(JudgedResponseRow.of("a", j).as_record()).judgment("x")
    assert back == j
