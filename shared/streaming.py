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

from .engine import Engine, GenerationRequest

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
    opener = getattr(engine, "open_stream", None)
    stream: RequestStream = opener() if callable(opener) else BatchedStream(engine)
    try:
        yield stream
    finally:
        stream.close()

