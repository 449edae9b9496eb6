"""uvicorn's h11 protocol with a deadline on request headers (slow-loris connections).

uvicorn cuts idle keep-alive connections, but not a connection that sends its request headers a
byte at a time: 256 of them hold 256 file descriptors for as long as they like. Here each
connection must finish its request headers within `header_timeout` seconds of connecting (or of
its previous response); otherwise it is closed. The deadline comes from $PNEUMOSCAN_HEADER_TIMEOUT
(set by `serve --header-timeout`), so that `serve --workers N` processes read it too.
"""

from __future__ import annotations

import asyncio
import logging
import os

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_ENV = "PNEUMOSCAN_HEADER_TIMEOUT"
DEFAULT_HEADER_TIMEOUT_S = 30.0

logger = logging.getLogger("pneumoscan.serve")


class HeaderDeadlineProtocol(H11Protocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = float(os.environ.get(HEADER_TIMEOUT_ENV) or DEFAULT_HEADER_TIMEOUT_S)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._cancel_header_deadline()

    def on_response_complete(self) -> None:
        self._arm_header_deadline()  # the next request on this connection gets its own deadline
        super().on_response_complete()

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        prefix = f"{self.client[0]}:{self.client[1]} " if self.client else ""
        logger.info(
            "%sclosed: request headers not complete within %gs", prefix, self.header_timeout
        )
        self.transport.close()
