"""Shared fixtures. Everything runs offline: the hub is switched off before transformers is imported."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from service_harness import RedisServer

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the network
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The imprinted tiny chat model, built once per test session (about 10-30 s on 2 CPU cores)."""
    from workers.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of our own on a free loopback port, append-only file on (as deployed).

    Tests that need a Redis use this (or ``private_redis``): none may touch a server it did not
    start. The server can be killed and restarted on the same port and folder (``restart``).
    """
    from service_harness import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def private_redis(redis_server: RedisServer) -> tuple[subprocess.Popen, int]:
    """``redis_server`` as (process, port): tests SIGSTOP the process to make Redis unreachable."""
    assert redis_server.proc is not None
    return redis_server.proc, redis_server.port
