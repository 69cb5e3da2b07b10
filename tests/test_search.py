"""Tree search: expansion counts, early success, ties, failed parses, budgets, batching across trees."""

import json
import re

import pytest
from scripted import ScriptedEngine, no, refined, yes

from shared.config import SearchConfig
from shared.engine import MeteredEngine
from shared.judging import Judge
from shared.records import TreeRow
from shared.search import SearchRoot, Tree, max_expansions, search_trees


def roots(n: int = 1) -> list[SearchRoot]:
    return [SearchRoot(key=f"t{i}", prompt=f"prompt {i}", response="neg", judgment=no()) for i in range(n)]


def run(engine, n_trees=1, votes=3, **cfg) -> list[Tree]:
    config = SearchConfig(**cfg)
    judge = Judge(engine, votes=votes, tie_retries=config.tie_retries, seed=0)
    return search_trees(roots(n_trees), engine, judge, config, seed=0)


def value_votes(value_of):
    """A judge_fn that gives a response V = value_of(response) with 4 votes (pass count = 4V)."""

    def fn(p, r, i, k):
        return yes() if i < round(4 * value_of(r)) else no()

    return fn


@pytest.mark.parametrize(("strategy", "expected"), [("bfs", 15), ("dfs", 21)])
def test_default_expansion_counts_when_nothing_succeeds(strategy, expected) -> None:
    engine = ScriptedEngine(judge_fn=no)
    (tree,) = run(engine, strategy=strategy)
    assert tree.expansions == expected == max_expansions(SearchConfig(strategy=strategy))
    assert len(tree.nodes) == 1 + expected  # every child parsed and judged
    assert tree.status == "exhausted" and tree.success is None
    assert max(n.depth for n in tree.nodes) == 3


def test_bfs_levels_and_beam() -> None:
    engine = ScriptedEngine(judge_fn=no)
    (tree,) = run(engine, strategy="bfs")
    per_depth = [sum(n.depth == d for n in tree.nodes) for d in range(4)]
    assert per_depth == [1, 3, 6, 6]
    # BFS: one refine call per level (3 levels) and one judge call per level
    assert engine.kinds() == ["refine", "judge"] * 3


def test_dfs_order_follows_value() -> None:
    # child /1 has the highest value, /0 the next, /2 the lowest
    votes_for = {"0": 1, "1": 2, "2": 0}

    def fn(p, r, i, k):
        return yes() if i < votes_for[r.rsplit("/", 1)[-1]] else no()

    engine = ScriptedEngine(judge_fn=fn)
    # 5 votes: V(/1)=0.4, V(/0)=0.2, V(/2)=0 -> nothing succeeds
    (tree,) = run(engine, strategy="dfs", votes=5)
    refine_calls = [c for c in engine.calls if c[0].messages[-1]["content"].startswith("Based")]
    parents = [
        re.search(r"\[Output\]\n(.*)\n\[End of Output\]", c[0].messages[0]["content"]).group(1)
        for c in refine_calls
    ]
    assert parents == ["neg", "neg/1", "neg/1/1", "neg/1/0", "neg/0", "neg/0/1", "neg/0/0"]
    assert tree.status == "exhausted"


def test_bfs_stops_at_the_first_level_with_a_success() -> None:
    # any response refined twice (depth 2) passes
    engine = ScriptedEngine(judge_fn=value_votes(lambda r: 1.0 if r.count("/") >= 2 else 0.0))
    (tree,) = run(engine, strategy="bfs", votes=4)
    assert tree.status == "success"
    assert tree.expansions == 3 + 6
    assert tree.success.depth == 2 and tree.success.value == 1.0
    assert engine.kinds() == ["refine", "judge"] * 2


def test_bfs_picks_the_best_child_of_the_level() -> None:
    engine = ScriptedEngine(judge_fn=value_votes(lambda r: {"0": 0.75, "1": 1.0, "2": 0.75}[r[-1]]))
    (tree,) = run(engine, votes=4)
    assert tree.success.response == "neg/1" and tree.expansions == 3


def test_dfs_stops_at_the_first_success_without_expanding_siblings() -> None:
    # succeeds only at neg/0/0 (the first child of the first child)
    engine = ScriptedEngine(judge_fn=value_votes(lambda r: 1.0 if r == "neg/0/0" else 0.25))
    (tree,) = run(engine, strategy="dfs", votes=4)
    assert tree.success.response == "neg/0/0"
    assert tree.expansions == 6  # root and neg/0 only


def test_success_threshold_is_strict() -> None:
    engine = ScriptedEngine(judge_fn=value_votes(lambda r: 0.75))
    (tree,) = run(engine, votes=4, success_threshold=0.75)
    assert tree.success is None and tree.expansions == 15
    (tree,) = run(ScriptedEngine(judge_fn=value_votes(lambda r: 0.75)), votes=4, success_threshold=0.5)
    assert tree.success is not None


def test_tied_children_are_rejudged_then_dropped() -> None:
    # every child is tied 2-2 forever: after 1 + 3 judging rounds it is dropped
    engine = ScriptedEngine(judge_fn=lambda p, r, i, k: yes() if i % 2 else no())
    (tree,) = run(engine, votes=4, max_depth=1)
    assert tree.dropped_ties == 3 and len(tree.nodes) == 1
    assert tree.status == "no_children"
    assert engine.kinds() == ["refine"] + ["judge"] * 4


def test_a_tie_resolved_by_rejudging_counts() -> None:
    engine = ScriptedEngine(judge_fn=lambda p, r, i, k: yes() if k >= 1 or i % 2 else no())
    (tree,) = run(engine, votes=4, max_depth=1)
    assert tree.status == "success" and tree.dropped_ties == 0
    assert engine.kinds() == ["refine", "judge", "judge"]


def test_failed_parses_are_retried_in_batched_rounds() -> None:
    # the refiner forgets the markers on its first answer for every parent
    def refine(p, r, j, i, attempt):
        return "I would change a few things." if attempt == 0 else refined(f"{r}/{i}")

    engine = ScriptedEngine(judge_fn=no, refine_fn=refine)
    trees = run(engine, n_trees=4, max_depth=1)
    assert engine.kinds() == ["refine", "refine", "judge"]
    assert [r.n for r in engine.calls[1]] == [3, 3, 3, 3]
    for tree in trees:
        assert tree.parse_failures == 3 and tree.dropped_unparsed == 0 and len(tree.nodes) == 4


def test_unparsable_children_are_dropped_after_the_retries_and_the_tree_ends_without_crashing() -> None:
    engine = ScriptedEngine(judge_fn=no, refine_fn=lambda *a: "no markers here")
    (tree,) = run(engine, parse_retries=2)
    assert tree.status == "no_children" and tree.success is None
    assert tree.parse_failures == 9 and tree.dropped_unparsed == 3
    assert engine.kinds() == ["refine"] * 3  # nothing to judge: no judge call


def test_empty_markers_are_a_failed_parse() -> None:
    engine = ScriptedEngine(judge_fn=no, refine_fn=lambda *a: "Final Refined Output: [[start]]  [[end]]")
    (tree,) = run(engine, parse_retries=0, max_depth=1)
    assert tree.dropped_unparsed == 3


def test_a_refinement_cut_off_before_its_end_marker_follows_the_setting() -> None:
    cut = "Reflection: shorten it.\nFinal Refined Output: [[start]] a shorter answer that was cut"
    engine = ScriptedEngine(judge_fn=no, refine_fn=lambda *a: cut)
    (tree,) = run(engine, parse_retries=1, max_depth=1)  # the reference's default: keep the text
    assert tree.parse_failures == 0 and len(tree.nodes) == 4
    assert {n.response for n in tree.nodes[1:]} == {"a shorter answer that was cut"}
    engine = ScriptedEngine(judge_fn=no, refine_fn=lambda *a: cut)
    (tree,) = run(engine, parse_retries=1, max_depth=1, accept_unterminated=False)
    assert tree.parse_failures == 6 and tree.dropped_unparsed == 3 and len(tree.nodes) == 1


def test_budget_caps_expansions() -> None:
    engine = ScriptedEngine(judge_fn=no)
    (tree,) = run(engine, budget=7)
    assert tree.expansions == 7 and len(tree.nodes) == 8
    assert tree.status == "budget"
    assert max_expansions(SearchConfig(budget=7)) == 7


@pytest.mark.parametrize("strategy", ["bfs", "dfs"])
def test_engine_calls_do_not_grow_with_the_number_of_trees(strategy) -> None:
    counts = {}
    for n in (1, 64):
        engine = MeteredEngine(ScriptedEngine(judge_fn=no))
        trees = run(engine, n_trees=n, strategy=strategy)
        assert all(t.expansions == max_expansions(SearchConfig(strategy=strategy)) for t in trees)
        counts[n] = engine.stats.calls
    assert counts[1] == counts[64]
    assert counts[1] == (6 if strategy == "bfs" else 14)


def test_trees_that_finish_early_leave_the_batch() -> None:
    # tree t0's prompt accepts everything; the others never succeed
    engine = ScriptedEngine(judge_fn=lambda p, r, i, k: yes() if p == "prompt 0" else no())
    trees = run(engine, n_trees=3)
    assert trees[0].status == "success" and trees[0].expansions == 3
    assert [len(c) for c in engine.calls if c[0].messages[-1]["content"].startswith("Based")] == [3, 4, 4]


def test_the_judgment_cache_reuses_verdicts_of_repeated_refinements() -> None:
    # the refiner always proposes the same text: judged once, then served from the cache
    engine = ScriptedEngine(judge_fn=no, refine_fn=lambda *a: refined("same"))
    config = SearchConfig(max_depth=2)
    judge = Judge(engine, votes=3, seed=0)
    (tree,) = search_trees(roots(1), engine, judge, config, seed=0)
    assert sum(len(c) for c, k in zip(engine.calls, engine.kinds(), strict=False) if k == "judge") == 1
    assert judge.cache.hits > 0
    assert tree.expansions == 9


def test_tree_record_round_trip() -> None:
    engine = ScriptedEngine(judge_fn=value_votes(lambda r: 1.0 if r.count("/") >= 2 else 0.25))
    (tree,) = run(engine, votes=4)
    row = tree.row("p0")
    back = TreeRow.from_record(json.loads(json.dumps(row.as_record())))
    assert back == row and back.prompt_id == "p0" and back.status == "success"
    assert back.nodes == tree.nodes and back.max_depth_reached == max(n.depth for n in tree.nodes)
    assert back.success.response == tree.success.response and back.root == tree.root


def test_a_child_keeps_a_judgment_that_agrees_with_its_majority() -> None:
    engine = ScriptedEngine(judge_fn=value_votes(lambda r: 0.25))
    (tree,) = run(engine, votes=4, max_depth=1)
    for node in tree.nodes[1:]:
        assert node.judgment == no()
        assert node.vote == {"pass": 1, "fail": 3, "invalid": 0} and node.value == 0.25
