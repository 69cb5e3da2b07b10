"""The search tree of SPaR's stage 3 and the steps that grow it, shared by both searches.

``shared.search`` runs the batched search (one engine call per step for every tree) and
``shared.search_stream`` the streamed one (trees advance independently over a request stream); both
grow the same trees with the functions here, which is why the two searches give the same trees.
Kept apart from both so that neither search imports the other's module to reach them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from .config import SearchConfig
from .engine import GenerationRequest
from .judging import Judgment
from .records import NodeRow, SearchedTree, TreeRow, VoteCounts
from .refinement_guard import unfaithful_reason
from .seeding import derive_seed
from .templates import extract_refined, refine_conversation


class TreeStatus(StrEnum):
    """Where a tree's search stands; every status but ``running`` is final (written as its value)."""

    RUNNING = "running"
    SUCCESS = "success"  # a child's value passed the success threshold
    EXHAUSTED = "exhausted"  # the depth limit was reached without a success
    BUDGET = "budget"  # the expansion budget ran out first
    NO_CHILDREN = "no_children"  # no child could be produced (unparsable replies, ties)


@dataclass(frozen=True)
class SearchRoot:
    """A negative to repair: its prompt, response and the kept judgment explaining its failure."""

    key: str
    prompt: str
    response: str
    judgment: str


Node = NodeRow
"""A response in a tree: the row it is written as (the root has no parent, no ``raw``, no vote, value 0)."""


@dataclass
class Tree(SearchedTree):
    """One search and its statistics. ``status`` ends as success, exhausted, budget or no_children.

    The search's state (``status`` while running, the ``frontier``); what is written of it is
    :meth:`row`, the one place the record's fields are filled.
    """

    key: str
    prompt: str
    nodes: list[Node]
    expansions: int = 0
    parse_failures: int = 0
    dropped_unparsed: int = 0
    dropped_ties: int = 0
    unfaithful: int = 0
    success_id: int | None = None
    status: TreeStatus = TreeStatus.RUNNING
    frontier: list[int] = field(default_factory=list)

    @property
    def max_depth_reached(self) -> int:
        return max(n.depth for n in self.nodes)

    def row(self, prompt_id: str) -> TreeRow:
        """The finished tree as the record stage 3 writes: every field of :class:`TreeRow` is the
        tree's attribute of that name, but for the prompt id, which only the caller knows."""
        fields = {name: getattr(self, name) for name in TreeRow.model_fields if name != "prompt_id"}
        return TreeRow.model_validate({"prompt_id": prompt_id, **fields})


@dataclass(frozen=True)
class Expansion:
    tree: Tree
    node: Node
    children: int


def refinement_of(raw: str, expansion: Expansion, cfg: SearchConfig) -> str | None:
    """The refined response in the refiner's reply ``raw`` to ``expansion``, or None when there is
    none to judge: the reply has no parsable refinement (a parse failure) or the guard refuses it
    (``search.guard``: counted as unfaithful). Either way the caller asks again, up to
    ``search.parse_retries`` times."""
    refined = extract_refined(raw, cfg.accept_unterminated)
    if refined is None:
        expansion.tree.parse_failures += 1
        return None
    if cfg.guard is not None and unfaithful_reason(expansion.node.response, refined, cfg.guard):
        expansion.tree.unfaithful += 1
        return None
    return refined


StepCallback = Callable[[int, int], None]
"""Called after each search step with (step number, trees still running)."""

TreeDone = Callable[[Tree], None]
"""Called once per tree, as soon as it stops running (success, exhausted, budget): the stage keeps
each finished tree on disk, so a process that dies mid-shard loses only the trees still growing."""


def max_expansions(cfg: SearchConfig) -> int:
    """Most expansions one tree can use with ``cfg`` (15 for BFS defaults, 21 for DFS)."""
    if cfg.strategy == "bfs":
        nodes = 1 + min(cfg.beam, cfg.branching) * (cfg.max_depth - 1)
    else:
        nodes = sum(min(cfg.beam, cfg.branching) ** d for d in range(cfg.max_depth))
    total = nodes * cfg.branching
    return total if cfg.budget is None else min(total, cfg.budget)


def next_expansions(tree: Tree, cfg: SearchConfig) -> list[Expansion]:
    """The nodes this tree expands in the coming step, each with its number of children.

    BFS expands the whole frontier; DFS the last node of its stack. Either way the budget caps the
    children requested, and a tree with nothing left to expand is finished here.
    """
    pending = list(tree.frontier) if cfg.strategy == "bfs" else tree.frontier[-1:]
    out: list[Expansion] = []
    left = None if cfg.budget is None else cfg.budget - tree.expansions
    for node_id in pending:
        want = cfg.branching if left is None else min(cfg.branching, left)
        if want <= 0:
            break
        out.append(Expansion(tree, tree.nodes[node_id], want))
        tree.expansions += want
        if left is not None:
            left -= want
    if not out:
        tree.status = TreeStatus.BUDGET if tree.frontier else _exhausted_status(tree)
        tree.frontier = []
        return []
    taken = {e.node.id for e in out}
    tree.frontier = [n for n in tree.frontier if n not in taken]
    return out


def _exhausted_status(tree: Tree) -> TreeStatus:
    return TreeStatus.NO_CHILDREN if len(tree.nodes) == 1 else TreeStatus.EXHAUSTED


def refine_request(
    expansion: Expansion, n: int, cfg: SearchConfig, seed: int, attempt: int
) -> GenerationRequest:
    """``n`` refinements of an expanded node; the seed names the tree, the node and the attempt only."""
    tree, node = expansion.tree, expansion.node
    return GenerationRequest(
        messages=refine_conversation(tree.prompt, node.response, node.judgment),
        n=n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=derive_seed(seed, "refine", tree.key, node.id, attempt),
    )


def attach_child(
    expansion: Expansion, raw: str, refined: str, judgment: Judgment, grouped: dict[int, list[Node]]
) -> None:
    """Add a judged child to its tree (a tie is dropped) and to ``grouped``, its step's children by parent.

    Node ids follow the order of the calls, so both searches attach a step's children in one order:
    by attempt, then expansion, then completion.
    """
    tree = expansion.tree
    if not judgment.decided:
        tree.dropped_ties += 1
        return
    node = _child_node(tree, expansion.node, raw, refined, judgment)
    tree.nodes.append(node)
    grouped.setdefault(expansion.node.id, []).append(node)


def _child_node(tree: Tree, parent: Node, raw: str, refined: str, judgment: Judgment) -> Node:
    assert judgment.value is not None and judgment.kept is not None
    return Node(
        id=len(tree.nodes),
        parent=parent.id,
        depth=parent.depth + 1,
        response=refined,
        judgment=judgment.kept,
        value=judgment.value,
        raw=raw,
        vote=VoteCounts.of(judgment.vote).as_record(),
    )


def _ranked(nodes: list[Node]) -> list[Node]:
    """Highest value first; among equal values the earlier child first (stable sort)."""
    return sorted(nodes, key=lambda n: -n.value)


def advance(tree: Tree, children: dict[int, list[Node]], cfg: SearchConfig) -> None:
    """Apply one step's judged children to a tree: stop on success, else choose what to expand."""
    if cfg.strategy == "bfs":
        level = _ranked([n for group in children.values() for n in group])
        if level and level[0].value > cfg.success_threshold:
            _succeed(tree, level[0])
            return
        tree.frontier = [n.id for n in level[: cfg.beam] if n.depth < cfg.max_depth]
    else:
        for parent_id in children:  # DFS expands exactly one node per step
            ranked = _ranked(children[parent_id])
            if ranked[0].value > cfg.success_threshold:
                _succeed(tree, ranked[0])
                return
            # push the best last so that it is expanded next (depth first, in order of V)
            tree.frontier.extend(reversed([n.id for n in ranked[: cfg.beam] if n.depth < cfg.max_depth]))
    if not tree.frontier:
        tree.status = _exhausted_status(tree)


def _succeed(tree: Tree, node: Node) -> None:
    tree.success_id = node.id
    tree.status = TreeStatus.SUCCESS
    tree.frontier = []
