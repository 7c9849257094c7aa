"""uvicorn's httptools protocol with a deadline for a request's headers.

uvicorn times out idle keep-alive connections but not a client that opens a connection
and sends its headers a byte at a time (slowloris): the app is never called, so no
middleware can help. This protocol arms a timer when a connection opens and when a new
request starts, and closes the connection (after a 408) if the headers are not complete
within `header_timeout_s`. The body's own deadline is `serving.guard`'s.
"""
from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from wenlv.settings import get_settings

TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout_s: float | None = None  # None: WENLV_HEADER_TIMEOUT

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_timer = None
        self._in_headers = False
        self._header_limit = self.header_timeout_s or get_settings().header_timeout_s

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_limit, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._in_headers:  # idle between requests is the keep-alive timeout's business
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)
