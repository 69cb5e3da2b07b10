"""How the API is served: uvicorn with h11, a bound on request line + headers, and a header deadline.

Why these settings: with httptools (uvicorn's default when installed) nothing bounds a request's
line or headers, and nothing bounds how long a client may take to send them. Measured here: a
120 MB header was read whole while ``/healthz`` took 3-4.7 s, four unfinished 50 MB headers held
180 MB, and a client sending one byte a minute held its connection forever -- all without a token,
before the app sees anything. uvicorn's h11 protocol has the size bound
(``h11_max_incomplete_event_size``: past ``SPAR_MAX_HEADER_BYTES`` of line plus headers, a 400 and
the connection closed). The deadline is added here by :class:`HeaderDeadlineH11`, a subclass that
starts a timer when a request begins and closes the connection if its headers are not complete
within ``SPAR_HEADER_TIMEOUT`` seconds (uvicorn's only timer is the keep-alive one, between requests).

Why not another server: hypercorn and granian both bound header sizes, but uvicorn is what the
images, the compose file and every test already run; the subclass touches two documented asyncio
``Protocol`` methods plus uvicorn's ``conn`` (the h11 connection), ``loop`` and ``transport``
attributes, pinned by ``tests/test_api_limits.py`` (uvicorn is pinned in ``constraints.txt``).
h11 parses in Python where httptools parses in C: requests cost slightly more CPU, which the
run-view cache (answered before FastAPI, ``cached_view.py``) keeps small.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import Settings


class HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, plus: a request's line and headers must arrive within ``header_timeout``.

    The timer starts with the connection and again with the first bytes of each later request on
    it; it stops once h11 has the whole head (the connection leaves h11's IDLE state). When it
    fires first, the connection is closed: a slow client holds nothing for long.
    """

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm()  # a request begun, its head not complete yet (a no-op while armed)
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_head_deadline", None) is not None:
            self._head_deadline.cancel()  # type: ignore[union-attr]
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.warning("no request headers within %ss: connection closed", self.header_timeout)
            self.transport.close()


def protocol_for(settings: Settings) -> type[HeaderDeadlineH11]:
    """:class:`HeaderDeadlineH11` with this server's deadline (uvicorn instantiates the class)."""
    return type("SparH11", (HeaderDeadlineH11,), {"header_timeout": settings.header_timeout})


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings for the API (``spar api`` and the tests that serve it over a socket)."""
    return {
        "http": protocol_for(settings),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": 5,
    }
