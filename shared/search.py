"""Tree-search refinement of negatives (SPaR stage 3), batched across trees.

Each negative is the root of a tree. Expanding a node asks the refiner for ``branching`` refined
responses of it; each child is judged with ``votes`` samples and valued V = #pass / (#pass + #fail).
A child with V > ``success_threshold`` ends its tree with success.

- BFS: level by level; when the best child of a whole level does not succeed, the top ``beam``
  children by V form the next level. With the defaults at most 3 + 6 + 6 = 15 expansions.
- DFS: expand one node; when its best child does not succeed, descend into its top ``beam``
  children in order of V. With the defaults at most 3 + 6 + 12 = 21 expansions.

Batching: the search advances in *steps*. In one step every live tree contributes its pending
expansions (BFS: its whole frontier; DFS: the node on top of its stack) and all of them go to the
engine in ONE call; every reply without the ``[[start]]``/``[[end]]`` markers is retried in one more
call per retry round; then all new children of all trees are judged in one call (plus one per tie
re-judging round). The number of engine calls therefore depends on the depth (BFS: ``max_depth``
steps; DFS: at most ``sum(beam**d for d < max_depth)`` steps), never on the number of trees.
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import SearchConfig
from .engine import Engine
from .judging import Judges
from .search_stream import search_streamed
from .search_tree import (  # the tree model is re-exported: callers import it with the search
    Expansion,
    Node,
    SearchRoot,
    StepCallback,
    Tree,
    TreeDone,
    TreeStatus,
    advance,
    attach_child,
    max_expansions,
    next_expansions,
    refine_request,
    refinement_of,
)

__all__ = [
    "Node",
    "SearchRoot",
    "StepCallback",
    "Tree",
    "TreeDone",
    "TreeStatus",
    "max_expansions",
    "search_trees",
]


class _Finished:
    """Reports each tree to ``on_tree_done`` exactly once, when it is first seen finished."""

    def __init__(self, on_tree_done: TreeDone | None) -> None:
        self.on_tree_done = on_tree_done
        self.reported: set[int] = set()

    def check(self, tree: Tree) -> None:
        if self.on_tree_done is None or tree.status is TreeStatus.RUNNING or id(tree) in self.reported:
            return
        self.reported.add(id(tree))
        self.on_tree_done(tree)


def search_trees(
    roots: Sequence[SearchRoot],
    engine: Engine,
    judge: Judges,
    cfg: SearchConfig,
    seed: int,
    on_step: StepCallback | None = None,
    on_tree_done: TreeDone | None = None,
) -> list[Tree]:
    """Run the configured search on every root together; returns one finished tree per root.

    ``on_tree_done`` sees each tree once, as soon as it finishes (at the latest when the search ends).

    With ``cfg.pipeline`` (the default) and a judge that can be streamed (``judge.stream()`` is not
    None), the trees advance independently over one request stream (``shared.search_stream``): the
    same trees, without the per-step barriers below. Otherwise (or with ``pipeline: false``) the
    batched steps run here.
    """
    trees = [_planted(r) for r in roots]
    finished = _Finished(on_tree_done)
    streamed = judge.stream() if cfg.pipeline else None
    if streamed is not None:
        search_streamed(trees, engine, streamed, cfg, seed, on_step, on_tree_done=finished.check)
    else:
        _search_batched(trees, engine, judge, cfg, seed, on_step, finished)
    for tree in trees:  # whatever finished without a step of its own
        finished.check(tree)
    return trees


def _search_batched(
    trees: list[Tree],
    engine: Engine,
    judge: Judges,
    cfg: SearchConfig,
    seed: int,
    on_step: StepCallback | None,
    finished: _Finished,
) -> None:
    """The search in barrier steps: every live tree's pending expansions in one engine call."""
    step = 0
    while True:
        expansions = [e for t in trees if t.status is TreeStatus.RUNNING for e in next_expansions(t, cfg)]
        if not expansions:
            break
        step += 1
        replies = _expand(expansions, engine, cfg, seed)
        children = _judge_children(replies, judge)
        for tree in {id(e.tree): e.tree for e in expansions}.values():
            advance(tree, children.get(tree.key, {}), cfg)
            finished.check(tree)
        if on_step is not None:
            on_step(step, sum(t.status is TreeStatus.RUNNING for t in trees))


def _planted(root: SearchRoot) -> Tree:
    """A fresh tree: its only node, the negative to repair, on the frontier."""
    node = Node(
        id=0,
        parent=None,
        depth=0,
        response=root.response,
        judgment=root.judgment,
        value=0.0,
        raw=None,
        vote={},
    )
    return Tree(key=root.key, prompt=root.prompt, nodes=[node], frontier=[0])


def _expand(
    expansions: list[Expansion], engine: Engine, cfg: SearchConfig, seed: int
) -> list[tuple[Expansion, str, str]]:
    """Ask for every expansion's children in one call, retrying unparsable replies in batched rounds.

    Returns (expansion, raw refiner output, refined response) for each parsed child, in a stable order.
    """
    parsed: list[tuple[Expansion, str, str]] = []
    missing = {i: e.children for i, e in enumerate(expansions)}
    for attempt in range(cfg.parse_retries + 1):
        if not missing:
            break
        order = list(missing)
        requests = [refine_request(expansions[i], missing[i], cfg, seed, attempt) for i in order]
        outputs = engine.generate(requests)
        next_missing: dict[int, int] = {}
        for i, texts in zip(order, outputs, strict=True):
            for raw in texts:
                refined = refinement_of(raw, expansions[i], cfg)
                if refined is None:
                    next_missing[i] = next_missing.get(i, 0) + 1
                else:
                    parsed.append((expansions[i], raw, refined))
        missing = next_missing
    for i, count in missing.items():
        expansions[i].tree.dropped_unparsed += count
    return parsed


def _judge_children(
    replies: list[tuple[Expansion, str, str]], judge: Judges
) -> dict[str, dict[int, list[Node]]]:
    """Judge every new child of every tree together; add decided ones to their trees.

    Returns, per tree key, the new children grouped by parent id, in generation order.
    """
    judgments = judge.judge([(e.tree.prompt, refined) for e, _, refined in replies])
    grouped: dict[str, dict[int, list[Node]]] = {}
    for (expansion, raw, refined), judgment in zip(replies, judgments, strict=True):
        attach_child(expansion, raw, refined, judgment, grouped.setdefault(expansion.tree.key, {}))
    return grouped
