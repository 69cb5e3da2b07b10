"""Request streams: hand an engine requests one at a time and take back each as soon as it is done.

A batched ``Engine.generate`` call returns when its slowest generation ends, so a search that waits
for a whole batch before it looks at any result runs the tail of every batch at a small batch size.
A stream removes that barrier: the caller submits requests (each with a tag of its own), and each
``poll`` advances the engine and returns the results that finished meanwhile, so the caller can
judge a refinement, or expand a tree, while the engine keeps generating for the others.

Engines that can do this (vLLM in this process, and the engine host process in front of it) offer
``open_stream()``. Every other engine gets :class:`BatchedStream`: each ``poll`` sends everything
submitted since the last one as ONE ``generate`` call, so a caller written against streams still
batches across all its work on an engine that only knows batches.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .engine import INNER_COUNTS, Engine, EngineStats, GenerationRequest, MeteredEngine

Tag = Hashable
Done = list[tuple[Tag, list[str]]]


@runtime_checkable
class RequestStream(Protocol):
    """Requests in, results out in the order they finish (not the order they went in)."""

    def submit(self, tag: Tag, request: GenerationRequest, priority: int = 0) -> None:
        """Queue ``request``; its ``n`` completions come back from a later ``poll`` with ``tag``.

        ``priority`` orders the requests an engine cannot start yet (lower first, then by arrival):
        a hint for a scheduling engine (vLLM with ``scheduling_policy: priority``), never a change
        to what is generated. Engines without a queue of their own ignore it.
        """
        ...

    def poll(self) -> Done:
        """Advance the engine a little and return what finished; may be empty while work runs."""
        ...

    @property
    def pending(self) -> int:
        """Requests submitted whose results have not been returned yet."""
        ...

    def close(self) -> None:
        """Drop whatever is still running (its results are never returned)."""
        ...


def wait(stream: RequestStream) -> Done:
    """Results of at least one request (blocking until one finishes); ``[]`` when nothing is pending."""
    while stream.pending:
        done = stream.poll()
        if done:
            return done
    return []


@dataclass
class BatchedStream:
    """A stream over a batch-only engine: each ``poll`` runs everything submitted as one call."""

    engine: Engine
    _tags: list[Tag] = field(default_factory=list)
    _requests: list[GenerationRequest] = field(default_factory=list)

    def submit(self, tag: Tag, request: GenerationRequest, priority: int = 0) -> None:
        # one call runs everything submitted: there is no queue for a priority to order
        self._tags.append(tag)
        self._requests.append(request)

    def poll(self) -> Done:
        if not self._requests:
            return []
        tags, requests = self._tags, self._requests
        self._tags, self._requests = [], []
        outputs = self.engine.generate(requests)
        return list(zip(tags, outputs, strict=True))

    @property
    def pending(self) -> int:
        return len(self._requests)

    def close(self) -> None:
        self._tags, self._requests = [], []


@contextmanager
def open_stream(engine: Engine) -> Iterator[RequestStream]:
    """The engine's own stream when it has one, else a :class:`BatchedStream`; closed on exit."""
    stream = _open(engine)
    try:
        yield stream
    finally:
        stream.close()


def _streams_natively(engine: Engine) -> bool:
    """Whether ``engine`` has a stream of its own (a metered engine has one when its inner one does)."""
    return isinstance(engine, MeteredEngine) or callable(getattr(engine, "open_stream", None))


def _open(engine: Engine) -> RequestStream:
    if isinstance(engine, MeteredEngine):
        return metered_stream(engine)
    opener = getattr(engine, "open_stream", None)
    return opener() if callable(opener) else BatchedStream(engine)


def metered_stream(owner: MeteredEngine) -> MeteredStream:
    """A stream counted like ``MeteredEngine.generate``: one call per stream, its requests,
    completions and tokens.

    The wrapped engine's own stream when it has one (vLLM, the engine host), else a
    :class:`BatchedStream` over the metered engine (so each batch it sends is a counted call).
    Lives here, not as a ``MeteredEngine`` method, so that ``engine`` never imports this module.
    """
    if not _streams_natively(owner.inner):
        return MeteredStream(owner, BatchedStream(owner), count=False)
    owner.stats.calls += 1
    return MeteredStream(owner, _open(owner.inner), count=True)


@dataclass
class MeteredStream:
    """Counts a wrapped engine stream's requests into the owning ``MeteredEngine`` and checks shapes."""

    owner: MeteredEngine
    inner: RequestStream
    count: bool
    _asked: dict[Tag, int] = field(default_factory=dict)

    def submit(self, tag: Tag, request: GenerationRequest, priority: int = 0) -> None:
        self._asked[tag] = request.n
        self.inner.submit(tag, request, priority)

    def poll(self) -> Done:
        inner_stats = getattr(self.owner.inner, "stats", None)
        before = inner_stats.snapshot() if self.count and isinstance(inner_stats, EngineStats) else None
        done = self.inner.poll()
        for tag, completions in done:
            n = self._asked.pop(tag)
            if len(completions) != n:
                raise RuntimeError(f"engine returned {len(completions)} completions for {tag!r} (n={n})")
            if self.count:
                self.owner.stats.requests += 1
                self.owner.stats.completions += n
        if before is not None and isinstance(inner_stats, EngineStats):
            delta = inner_stats.minus(before)
            for name in INNER_COUNTS:
                setattr(self.owner.stats, name, getattr(self.owner.stats, name) + getattr(delta, name))
        return done

    @property
    def pending(self) -> int:
        return int(self.inner.pending)

    def close(self) -> None:
        self.inner.close()
