"""The tree search as a stream: each tree moves on as soon as its own step is judged.

The batched search (``shared.search``) holds every tree at a barrier three times per step: all
refinements, then all retries of unparsable ones, then all judgments (and tie re-judgings) must end
before any tree moves on, so the engine finishes every call at a shrinking batch size. Here the
search is a set of small state machines fed by one :mod:`request stream <shared.streaming>`:

- a refinement is parsed the moment it returns; a parsed child is sent to be judged at once, an
  unparsable one is retried at once;
- a child's tie is re-judged the moment its vote is counted;
- a tree whose step is complete is advanced (the same ``advance`` as the batched search) and its
  next expansions are submitted while the other trees are still generating.

Same trees as the batched search. Every request carries the seed the batched search gives it (tree,
node and attempt for a refinement; the pair's text and the round for a judgment), and a step's
children are attached in the batched search's order (attempt, expansion, completion), so node ids,
values and the chosen frontier are the same whatever order the engine finishes requests in. What
may differ: an engine whose sampling is not batch-invariant (vLLM's numerics can move with the
batch's composition) can give other texts for a seed, as it can between any two batch sizes; and
``cache_hits`` counts a child that joins an identical pair still being judged as no hit.

Requests carry a scheduling priority: the trees furthest behind go first. A refinement of a tree's
step ``s`` has priority ``2s``, the judgments of that step ``2s + 1`` (retries keep their step's
value; lower runs first). When more is submitted than the engine runs at once, first-come order
would let a tree that fell behind early (a tie re-judged, a reply retried) queue behind every later
level of the others and finish alone at a small batch; served by remaining work, the trees finish
together and the engine stays full to the end. Priorities order the queue only: every request and
every tree is the same under any order.

On a batch-only engine (``BatchedStream``) each wait runs everything submitted so far as one call:
the engine calls then depend on the depth and the retry rounds, never on the number of trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .config import SearchConfig
from .engine import Engine, GenerationRequest
from .judging import JudgeStream, Judgment, JudgmentCache
from .search_tree import (
    Expansion,
    StepCallback,
    Tree,
    TreeDone,
    TreeStatus,
    advance,
    attach_child,
    next_expansions,
    refine_request,
    refinement_of,
)
from .streaming import RequestStream, open_stream, wait


@dataclass(eq=False)
class _Child:
    """A parsed refinement of one step, waiting for (or holding) its judgment."""

    order: tuple[int, int, int]  # (attempt, expansion index, completion index): the attach order
    expansion: Expansion
    raw: str
    refined: str
    judgment: Judgment | None = None


@dataclass(eq=False)
class _Step:
    """One tree's step: its expansions, the children parsed so far, and what it still waits for."""

    tree: Tree
    number: int  # the steps this tree finished before this one (0 for the root's expansion)
    expansions: list[Expansion]
    children: list[_Child] = field(default_factory=list)
    waiting: int = 0  # refinement requests in flight + children without a judgment


@dataclass(eq=False)
class _Judging:
    """A (prompt, response) pair being judged, and every child (of any tree) that waits for it."""

    prompt: str
    response: str
    round_no: int
    priority: int  # of the step that asked first
    waiters: list[tuple[_Step, _Child]]


class StreamedSearch:
    """Runs the search for a set of trees over one request stream (see the module docstring)."""

    def __init__(
        self,
        stream: RequestStream,
        judge: JudgeStream,
        cfg: SearchConfig,
        seed: int,
        on_step: StepCallback | None,
        trees: Sequence[Tree],
        on_tree_done: TreeDone | None = None,
    ) -> None:
        self.stream = stream
        self.on_tree_done = on_tree_done
        self.judge = judge
        self.cfg = cfg
        self.seed = seed
        self.on_step = on_step
        self.trees = list(trees)
        self.judging: dict[str, _Judging] = {}
        self.steps_done = 0

    def run(self) -> None:
        for tree in self.trees:
            self._begin_step(tree, 0)
        while self.stream.pending:
            for tag, texts in wait(self.stream):
                if tag[0] == "refine":
                    _, step, index, attempt = tag
                    self._refined(step, index, attempt, texts)
                else:
                    _, key, round_no = tag
                    self._judged(key, round_no, texts)
        stuck = [t.key for t in self.trees if t.status is TreeStatus.RUNNING]
        if stuck:  # a bug in this state machine, never a property of the data
            raise RuntimeError(f"the streamed search ended with trees still running: {stuck[:5]}")

    def _running(self) -> int:
        return sum(t.status is TreeStatus.RUNNING for t in self.trees)

    @staticmethod
    def refine_priority(step: _Step) -> int:
        """Lower runs first: a tree with more steps ahead of it (refine, then judge, per step)."""
        return 2 * step.number

    @staticmethod
    def judge_priority(step: _Step) -> int:
        return 2 * step.number + 1

    def _begin_step(self, tree: Tree, number: int) -> None:
        expansions = next_expansions(tree, self.cfg)  # none: the tree is finished (status set there)
        if not expansions:
            return
        step = _Step(tree, number, expansions)
        for index, expansion in enumerate(expansions):
            self._submit_refine(step, index, 0, expansion.children)

    def _submit_refine(self, step: _Step, index: int, attempt: int, n: int) -> None:
        request = refine_request(step.expansions[index], n, self.cfg, self.seed, attempt)
        self.stream.submit(("refine", step, index, attempt), request, self.refine_priority(step))
        step.waiting += 1

    def _refined(self, step: _Step, index: int, attempt: int, texts: list[str]) -> None:
        step.waiting -= 1
        expansion = step.expansions[index]
        unparsed = 0
        for completion, raw in enumerate(texts):
            refined = refinement_of(raw, expansion, self.cfg)
            if refined is None:
                unparsed += 1
                continue
            child = _Child((attempt, index, completion), expansion, raw, refined)
            step.children.append(child)
            self._request_judgment(step, child)
        if unparsed:
            if attempt < self.cfg.parse_retries:
                self._submit_refine(step, index, attempt + 1, unparsed)
            else:
                step.tree.dropped_unparsed += unparsed
        self._maybe_finish(step)

    def _request_judgment(self, step: _Step, child: _Child) -> None:
        prompt = step.tree.prompt
        first = self.judge.begin(prompt, child.refined)
        if isinstance(first, Judgment):  # cached, or judged without the engine (the verifier)
            child.judgment = first
            return
        key = JudgmentCache.key(prompt, child.refined)
        step.waiting += 1
        running = self.judging.get(key)
        if running is not None:  # the same pair is already being judged (another tree, same text)
            running.waiters.append((step, child))
            running.priority = min(running.priority, self.judge_priority(step))  # for a tie's rounds
            return
        priority = self.judge_priority(step)
        self.judging[key] = _Judging(prompt, child.refined, 0, priority, [(step, child)])
        self.stream.submit(("judge", key, 0), first, priority)

    def _judged(self, key: str, round_no: int, texts: list[str]) -> None:
        entry = self.judging[key]
        judgment = self.judge.resume(entry.prompt, entry.response, texts, round_no)
        if isinstance(judgment, GenerationRequest):  # a tie: one more round
            entry.round_no = round_no + 1
            self.stream.submit(("judge", key, entry.round_no), judgment, entry.priority)
            return
        del self.judging[key]
        for step, child in entry.waiters:
            child.judgment = judgment
            step.waiting -= 1
            self._maybe_finish(step)

    def _maybe_finish(self, step: _Step) -> None:
        if step.waiting:
            return
        grouped: dict[int, list] = {}
        for child in sorted(step.children, key=lambda c: c.order):
            assert child.judgment is not None
            attach_child(child.expansion, child.raw, child.refined, child.judgment, grouped)
        advance(step.tree, grouped, self.cfg)
        self.steps_done += 1
        if step.tree.status is TreeStatus.RUNNING:
            self._begin_step(step.tree, step.number + 1)
        elif self.on_tree_done is not None:
            self.on_tree_done(step.tree)
        if self.on_step is not None:
            self.on_step(self.steps_done, self._running())


def search_streamed(
    trees: Sequence[Tree],
    engine: Engine,
    judge: JudgeStream,
    cfg: SearchConfig,
    seed: int,
    on_step: StepCallback | None = None,
    on_tree_done: TreeDone | None = None,
) -> None:
    """Run the search on ``trees`` (fresh roots) over one stream of ``engine``; trees are updated.

    ``judge`` is a judge's :meth:`~shared.judging.Judges.stream` (``search_trees`` asks for it);
    ``on_tree_done`` is called with each tree as it finishes.
    """
    with open_stream(engine) as stream:
        StreamedSearch(stream, judge, cfg, seed, on_step, trees, on_tree_done).run()
