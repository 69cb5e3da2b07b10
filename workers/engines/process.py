"""An engine hosted in a child process, so that closing it returns ALL of its memory.

Why a process: vLLM's engine holds memory that ``del`` and ``gc.collect()`` do not reliably give
back on GPU (CUDA contexts, NCCL groups, the allocator's pools, compiled-graph caches; reported in
vLLM's own issues), and its engine-core processes may outlive a dropped ``LLM`` object. Only ending
the processes guarantees the release. ``bench/engine_memory.py`` measured the options on the CPU
build (vLLM's sleep mode is not available there, and on GPU it still keeps the CUDA context).

How: ``ProcessEngine`` starts ``python -m workers.engines.process`` in its own session (process
group), hands it the role's ``ModelConfig``, the ``ModelVersion`` and the seed, and the child builds
the engine with :func:`workers.engines.build_engine`. Each ``generate`` call sends the whole batch
as one JSON line over a private pipe and reads one JSON line back, so the engine still sees one
batch per call; the child also returns its engine's cumulative ``EngineStats``, which the parent
mirrors into ``self.stats`` (``MeteredEngine`` reads deltas from it). ``close()`` asks the child to
shut its engine down and exit, then kills whatever is left of its process group.

The protocol runs over dedicated file descriptors, not stdin/stdout, because vLLM and transformers
write their logs to stdout/stderr, which the child inherits from the worker.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from shared.config import ModelConfig
from shared.engine import EngineStats, GenerationRequest
from shared.errors import EngineHostError  # noqa: F401  (also importable from here)
from shared.runtime.settings import settings
from shared.runtime.versions import ModelVersion
from workers.priority import keep_parent_priority

log = logging.getLogger("spar.engines.process")

CLOSE_GRACE_S = 60.0
"""How long a child may take to shut its engine down before its process group is killed."""


def _start_error(kind: str, message: str) -> Exception:
    """The same error class the engine raised in the child when the parent knows it, else ours."""
    for module in ("shared.errors", "workers.engines.vllm", "shared.engine", "workers.engines.hf"):
        cls = getattr(sys.modules.get(module), kind, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(message)
            except TypeError:  # an error class with another constructor: fall back to ours
                break
    return EngineHostError(f"{kind}: {message}")


class ProcessEngine:
    """An ``Engine`` whose model lives in a child process; ``close()`` ends that process tree."""

    def __init__(self, model: ModelConfig, version: ModelVersion, seed: int = 0) -> None:
        self.model = model
        self.version = version
        self.stats = EngineStats()
        self._lock = threading.Lock()
        parent_in, child_out = os.pipe()  # child -> parent
        child_in, parent_out = os.pipe()  # parent -> child
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.engines.process",
                "--in-fd",
                str(child_in),
                "--out-fd",
                str(child_out),
            ],
            pass_fds=(child_in, child_out),
            start_new_session=True,  # its own process group: close() can end every descendant
            env=_child_env(),
        )
        os.close(child_in)
        os.close(child_out)
        self._send: IO[str] | None = os.fdopen(parent_out, "w", encoding="utf-8")
        self._recv: IO[str] | None = os.fdopen(parent_in, "r", encoding="utf-8")
        self._finalizer = weakref.finalize(self, _end_group, self.proc, self._send, self._recv, 5.0)
        try:
            reply = self._call(
                {
                    "op": "start",
                    "model": model.model_dump(mode="json"),
                    "version": dataclasses.asdict(version),
                    "seed": seed,
                }
            )
        except BaseException:
            self.close()
            raise
        self.child_pid: int = reply["pid"]
        self.load_seconds = time.perf_counter() - started
        log.info(
            "engine host started",
            extra={
                "event": "engine.host_start",
                "pid": self.proc.pid,
                "seconds": round(self.load_seconds, 2),
            },
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self._send is not None

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request line out, one reply line back; any interruption ends the child (state unknown)."""
        self._write(message)
        return self._read(message["op"])

    def _write(self, message: dict[str, Any]) -> None:
        if self._send is None or self._recv is None:
            raise EngineHostError("this engine was closed; build a new one")
        try:
            self._send.write(json.dumps(message) + "\n")
            self._send.flush()
        except BaseException:
            self.close(grace_s=0)  # a half-written message cannot be resynchronised: end the host
            raise

    def _read(self, op: str) -> dict[str, Any]:
        if self._recv is None:
            raise EngineHostError("this engine was closed; build a new one")
        try:
            line = self._recv.readline()
        except BaseException:
            self.close(grace_s=0)  # a half-read reply cannot be resynchronised: end the host
            raise
        if not line:
            code = self.proc.wait(timeout=CLOSE_GRACE_S)
            self.close(grace_s=0)
            raise EngineHostError(
                f"the engine host process exited with code {code} (its log is in this worker's output)"
            )
        reply = json.loads(line)
        if not reply.get("ok"):
            if op == "start":
                raise _start_error(reply.get("kind", "Exception"), reply.get("message", ""))
            raise EngineHostError(f"{reply.get('kind')}: {reply.get('message')}")
        return reply

    def _take_stats(self, reply: dict[str, Any]) -> None:
        for key, value in reply.get("stats", {}).items():
            if hasattr(self.stats, key):
                setattr(self.stats, key, value)

    def open_stream(self) -> HostStream:
        """A request stream into the hosted engine (its own stream, or batches for an HF engine).

        The host keeps stepping its engine while this process handles results and submits more;
        the stream holds the host until it is closed (``generate`` waits meanwhile).
        """
        return HostStream(self)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        """The whole batch in one message, so the hosted engine batches it as one call."""
        requests = list(requests)
        if not requests:
            return []
        with self._lock:
            reply = self._call({"op": "generate", "requests": [r.model_dump(mode="json") for r in requests]})
        self._take_stats(reply)
        return reply["results"]

    def reset_prefix_cache(self) -> bool:
        """The hosted engine's ``reset_prefix_cache`` (False for an engine without a prefix cache)."""
        with self._lock:
            return bool(self._call({"op": "reset_prefix_cache"})["reset"])

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Shut the engine down and end the child's whole process group. Idempotent."""
        if self._send is not None and self.proc.poll() is None and grace_s > 0:
            try:
                self._send.write(json.dumps({"op": "close"}) + "\n")
                self._send.flush()
            except OSError:
                pass
        send, recv = self._send, self._recv
        self._send = self._recv = None
        self._finalizer.detach()
        _end_group(self.proc, send, recv, grace_s)


class HostStream:
    """The parent's end of a request stream into the engine host (see ``ProcessEngine.open_stream``).

    Requests are numbered here and travel as JSON with their numbers; tags never leave this process.
    Submissions are sent together at the next ``poll``, which then blocks until the host reports at
    least one finished request. An error in the host ends the host (its engine state is unknown).
    """

    def __init__(self, host: ProcessEngine) -> None:
        self.host = host
        self._ids = itertools.count()
        self._tags: dict[int, Any] = {}
        self._unsent: list[list[Any]] = []
        self._inflight = 0
        self._open = False
        host._lock.acquire()
        try:
            self._guarded(lambda: host._call({"op": "stream_open"}))
        except BaseException:
            host._lock.release()
            raise
        self._open = True

    def _guarded(self, action: Any) -> Any:
        try:
            return action()
        except EngineHostError:
            self.host.close(grace_s=0)
            raise

    def submit(self, tag: Any, request: GenerationRequest, priority: int = 0) -> None:
        number = next(self._ids)
        self._tags[number] = tag
        self._unsent.append([number, request.model_dump(mode="json"), int(priority)])

    def poll(self) -> list[tuple[Any, list[str]]]:
        if self._unsent:
            self._guarded(lambda: self.host._write({"op": "stream_submit", "items": self._unsent}))
            self._inflight += len(self._unsent)
            self._unsent = []
        if not self._inflight:
            return []
        reply = self._guarded(lambda: self.host._read("stream_poll"))
        self.host._take_stats(reply)
        done = [(self._tags.pop(number), texts) for number, texts in reply["done"]]
        self._inflight -= len(done)
        return done

    @property
    def pending(self) -> int:
        return len(self._unsent) + self._inflight

    def close(self) -> None:
        """End the stream in the host (it aborts what still runs) and free the host for others."""
        if not self._open:
            return
        self._open = False
        try:
            if self.host.alive:
                self.host._write({"op": "stream_close"})
                while True:  # results still on their way are dropped
                    reply = self.host._read("stream_close")
                    if reply.get("closed"):
                        self.host._take_stats(reply)
                        break
        except EngineHostError:
            self.host.close(grace_s=0)
        finally:
            self._tags, self._unsent, self._inflight = {}, [], 0
            self.host._lock.release()


def _child_env() -> dict[str, str]:
    """The worker's environment, with spar's source root importable by the child."""
    env = dict(os.environ)
    # vLLM logs every request batch and its whole config at INFO: only its errors reach the run's
    # output unless SPAR_ENGINE_LOG_LEVEL asks for more (read by its engine processes too)
    env.setdefault("VLLM_LOGGING_LEVEL", settings().engine_log_level)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _end_group(proc: subprocess.Popen, send: IO[str] | None, recv: IO[str] | None, grace_s: float) -> None:
    """Wait up to ``grace_s`` for the child, then kill its process group (vLLM's engine core too)."""
    for stream in (send, recv):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("engine host did not exit in %.0f s: killing it", grace_s)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the group outlives its leader: leftovers are ended here
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.05)
        if not _group_alive(proc.pid):
            break
    if proc.poll() is None:
        proc.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# The child side.


def _die_with_parent() -> None:
    """End this process group when the worker dies (even by kill -9), so no engine is orphaned.

    A watcher thread rather than Linux's PR_SET_PDEATHSIG, which fires when the spawning *thread*
    ends, not the worker process.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="spar-engine-host-watch").start()


def _serve(recv: IO[str], send: IO[str]) -> None:
    from . import build_engine, close_engine

    def reply(message: dict[str, Any]) -> None:
        send.write(json.dumps(message) + "\n")
        send.flush()

    # A reader thread fills the inbox, so that a stream can take new requests without stopping
    # its engine: the engine steps while the parent handles results (see _serve_stream).
    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read() -> None:
        try:
            for line in recv:
                inbox.put(json.loads(line))
        finally:
            inbox.put(None)  # the parent's end closed

    threading.Thread(target=read, name="engine-host-reader", daemon=True).start()
    engine = None
    try:
        while True:
            message = inbox.get()
            if message is None:
                break
            op = message["op"]
            if op == "close":
                break
            try:
                if op == "start":
                    model = ModelConfig.model_validate(message["model"])
                    version = ModelVersion(**message["version"])
                    engine = build_engine(model, version, seed=message["seed"], isolated=False)
                    reply({"ok": True, "pid": os.getpid()})
                elif op == "generate":
                    assert engine is not None, "generate before start"
                    requests = [GenerationRequest.model_validate(r) for r in message["requests"]]
                    results = engine.generate(requests)
                    reply({"ok": True, "results": results, "stats": _stats(engine)})
                elif op == "reset_prefix_cache":
                    assert engine is not None, "reset before start"
                    reset = getattr(engine, "reset_prefix_cache", None)
                    reply({"ok": True, "reset": bool(reset()) if callable(reset) else False})
                elif op == "stream_open":
                    assert engine is not None, "stream before start"
                    reply({"ok": True})
                    if not _serve_stream(engine, inbox, reply):
                        break
                else:
                    raise ValueError(f"unknown engine host operation {op!r}")
            except Exception as error:
                log.exception("engine host operation %s failed", op)
                reply({"ok": False, "kind": type(error).__name__, "message": str(error)})
                if op in ("start", "stream_open"):  # a stream that failed midway leaves no usable state
                    return
    finally:
        if engine is not None:
            close_engine(engine)


def _stats(engine: Any) -> dict[str, int]:
    stats = getattr(engine, "stats", None)
    return stats.as_dict() if stats is not None else {}


def _serve_stream(engine: Any, inbox: queue.Queue[dict[str, Any] | None], reply: Any) -> bool:
    """Run one request stream until the parent closes it; False when the parent went away.

    While requests are in flight the engine steps without waiting for messages; every step that
    finishes requests sends them back at once, with the engine's counters.
    """
    from shared.streaming import open_stream

    with open_stream(engine) as stream:
        while True:
            messages: list[dict[str, Any] | None] = []
            if not stream.pending:
                messages.append(inbox.get())
            while True:
                try:
                    messages.append(inbox.get_nowait())
                except queue.Empty:
                    break
            for message in messages:
                if message is None or message["op"] == "close":  # the parent is ending this host
                    return False
                if message["op"] == "stream_submit":
                    for number, request, priority in message["items"]:
                        stream.submit(number, GenerationRequest.model_validate(request), int(priority))
                elif message["op"] == "stream_close":
                    stream.close()
                    reply({"ok": True, "closed": True, "stats": _stats(engine)})
                    return True
                else:
                    raise ValueError(f"engine host operation {message['op']!r} inside a stream")
            if stream.pending:
                done = stream.poll()
                if done:
                    reply({"ok": True, "done": done, "stats": _stats(engine)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="spar engine host (started by ProcessEngine)")
    parser.add_argument("--in-fd", type=int, required=True)
    parser.add_argument("--out-fd", type=int, required=True)
    args = parser.parse_args(argv)
    from .vllm import ENGINE_HOST_ENV  # (no vLLM import: that module imports it lazily)

    # this process holds the engine alone (see vllm._engine_core_in_this_process)
    os.environ[ENGINE_HOST_ENV] = "1"
    _die_with_parent()
    keep_parent_priority()  # its own session is its own scheduling group: keep the worker's nice
    logging.basicConfig(level=settings().log_level, stream=sys.stderr)
    engine_level = settings().engine_log_level
    for noisy in ("vllm", "triton", "torch", "transformers", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(engine_level)
    if engine_level != "DEBUG":  # deprecation notices from inside vLLM say nothing to a spar user
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm(\.|$)")
    with (
        os.fdopen(args.in_fd, "r", encoding="utf-8") as recv,
        os.fdopen(args.out_fd, "w", encoding="utf-8") as send,
    ):
        _serve(recv, send)


if __name__ == "__main__":  # vLLM spawns its engine core: the guard is required
    main()
