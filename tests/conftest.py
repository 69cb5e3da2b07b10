"""Shared fixtures. Everything runs offline: the hub is switched off before transformers is imported."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the network
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The imprinted tiny chat model, built once per test session (about 10-30 s on 2 CPU cores)."""
    from workers.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """A redis-server of our own on a free port, with an append-only file so a pause loses nothing.

    Yields the process (tests SIGSTOP it to make Redis unreachable) and its port.
    """
    from service_harness import free_port, wait_for_redis

    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    log = (tmp_path / "redis.log").open("w")
    proc = subprocess.Popen(
        ["redis-server", *f"--port {port} --bind 127.0.0.1 --appendonly yes".split(), "--dir", str(folder)]
        + ["--save", ""],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_redis(port)
        yield proc, port
    finally:
        proc.send_signal(signal.SIGCONT)  # never leave it stopped, even when the test failed mid-pause
        proc.terminate()
        proc.wait(timeout=20)
