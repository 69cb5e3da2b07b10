"""The server's own bounds, before the app sees a request (issue 23): header and URL size, header deadline.

The API as ``spar api`` serves it (uvicorn with :func:`services.api.server.server_options`), on a
real socket in a thread: a request line or headers past ``SPAR_MAX_HEADER_BYTES`` get a 400 and
the connection closed (they were read whole: 120 MB, no token needed); a client that does not finish
its headers within ``SPAR_HEADER_TIMEOUT`` loses the connection (slow clients held it forever);
a normal client on a kept-alive connection is not affected. Also pins the uvicorn attributes the
protocol subclass uses.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import httpx
import pytest
import uvicorn
from service_harness import free_port
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.api import Settings, create_app
from services.api.server import HeaderDeadlineH11, server_options

TOKEN = "limits-table-token-0123456789abcdef0123"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    root = tmp_path_factory.mktemp("limits")
    settings = Settings(
        api_token=TOKEN,
        scheduler=False,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # no route here needs Redis
        data_root=root,
        max_header_bytes=16_384,
        header_timeout=1.0,
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", **server_options(settings)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=10)


def exchange(address: tuple[str, int], data: bytes, wait_s: float = 10.0) -> bytes:
    """Send ``data``, then read until the server closes the connection (or ``wait_s`` passes)."""
    with socket.create_connection(address, timeout=wait_s) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading and closed: what it answered is still readable
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def test_a_header_over_the_limit_is_a_400_and_the_connection_closes(served: tuple[str, int]) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    answer = exchange(served, request)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_a_url_over_the_limit_is_a_400(served: tuple[str, int]) -> None:
    request = b"GET /healthz?" + b"q" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = exchange(served, request)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_a_client_that_never_finishes_its_headers_is_disconnected(served: tuple[str, int]) -> None:
    """Header timeout 1 s: the connection is closed by the server, with no answer."""
    started = time.monotonic()
    answer = exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", wait_s=15)
    assert answer == b""
    assert time.monotonic() - started < 14  # closed by the server, not by our own socket timeout


def test_a_kept_alive_connection_with_prompt_requests_is_unaffected(served: tuple[str, int]) -> None:
    host, port = served
    with httpx.Client(base_url=f"http://{host}:{port}") as client:
        for _ in range(3):
            assert client.get("/healthz").json() == {"ok": True}
            time.sleep(0.6)  # idle between requests (under the keep-alive timeout) is not a slow head
        assert client.get("/healthz", headers={"X-Fine": "b" * 4000}).status_code == 200


def test_the_uvicorn_attributes_the_protocol_uses_exist() -> None:
    """``HeaderDeadlineH11`` uses uvicorn's ``conn`` (an h11 connection), ``loop``, ``transport``
    and ``logger``; a uvicorn upgrade that renames them fails here first."""
    assert issubclass(HeaderDeadlineH11, H11Protocol)
    source = Path(uvicorn.protocols.http.h11_impl.__file__).read_text()
    for name in ("self.conn = h11.Connection", "self.loop = ", "self.transport", "self.logger"):
        assert name in source, name
    assert h11.IDLE is not None
