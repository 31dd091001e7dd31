"""uvicorn's httptools protocol with the bounds it lacks: header size, header time, body time.

uvicorn bounds neither on httptools (``h11_max_incomplete_event_size`` is
h11-only): a client may send megabytes of headers, or one byte a minute, and
hold a connection and its memory forever. :func:`bounded_protocol` returns a
protocol class that

* answers 431 and closes once a request's head (request line and headers)
  exceeds ``max_header_bytes``, counted as the bytes arrive, so an unfinished
  head is refused without being buffered past the limit plus one read;
* closes a connection whose head is not complete ``header_timeout`` seconds
  after it was opened or after its first byte arrived (408 if any byte came);
* answers a request it cannot parse (an unknown method, a broken request
  line) with a JSON 400, like every other error, and closes;
* answers 408 and closes once a request body that spans reads has sent no
  byte for ``body_timeout`` seconds while the server was reading (a paused
  read, the app not keeping up, is not the client's stall). A body that
  arrives with its head costs nothing: the timer starts only when the body
  is still incomplete at the end of a read.

Idle keep-alive connections keep uvicorn's own ``timeout_keep_alive``. A lost
connection calls the request's :class:`swapper.reply.DisconnectWatch` back
directly (``DISCONNECT_KEY`` in the scope), so no task per request waits on
``receive`` for it. ``SEND_BUFFER_KEY`` in the scope caps the connection's kernel
send buffer (for long-lived streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .reply import DISCONNECT_KEY, SEND_BUFFER_KEY

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
_REASONS = {400: b"Bad Request", 408: b"Request Timeout",
            431: b"Request Header Fields Too Large"}


def _refusal(status: int, message: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "code": str(status)}}).encode()
    return b"".join([b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
                     b"content-type: application/json\r\n",
                     b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body), body])


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol refusing oversized heads (431) and closing slow ones (408)."""

    max_header_bytes = DEFAULT_MAX_HEADER_BYTES
    header_timeout = DEFAULT_HEADER_TIMEOUT
    body_timeout = DEFAULT_BODY_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_since = 0.0  # when the head in progress started counting (0: none)
        self._refused = False
        self._in_body = False
        self._body_seen = 0.0
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and cycle.disconnected:
            notify: Callable[[], None] | None = cycle.scope.get(DISCONNECT_KEY)  # type: ignore[assignment]
            if notify is not None:
                notify()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if not self._head_since:
                self._start_head_clock()
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_header_bytes and not self._refused:
            self._refuse(431, f"request headers larger than {self.max_header_bytes} bytes")
        elif self._in_body:  # the body goes on in a later read: it must keep coming
            self._body_seen = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_at(self._body_seen + self.body_timeout,
                                                     self._body_check)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_since = False, 0.0  # its timer is left to find that out
        size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
        if size > self.max_header_bytes:
            self._refuse(431, f"request headers larger than {self.max_header_bytes} bytes")
            return
        super().on_headers_complete()
        # the request's watch is called back, not a task
        self.scope[DISCONNECT_KEY] = None  # type: ignore[literal-required]
        self.scope[SEND_BUFFER_KEY] = self._limit_send_buffer  # type: ignore[literal-required]
        self._in_body = True  # until on_message_complete

    def _limit_send_buffer(self, size: int) -> None:
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # the kernel doubles it (bookkeeping)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size // 2)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._in_body = False
        self._cancel_body_timer()
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def _start_head_clock(self) -> None:
        """A head starts counting now. The connection's one head timer is not moved for
        each request (keep-alive requests cost no timer): when it fires it checks the
        head then in progress, if any, and is set again only for that head."""
        self._head_since = self.loop.time()
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(self._head_since + self.header_timeout,
                                                 self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_check(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow is not None and self.flow.read_paused:  # we stopped reading, not the client
            self._body_seen = now
        due = self._body_seen + self.body_timeout
        if now < due:
            self._body_timer = self.loop.call_at(due, self._body_check)
            return
        message = f"request body stalled: no byte for {self.body_timeout:g} s"
        if self.cycle is not None and self.cycle.response_started:
            self._refused = True
            self.transport.close()
        else:
            self._refuse(408, message)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or not self._head_since or self.transport.is_closing():
            return
        due = self._head_since + self.header_timeout
        if self.loop.time() < due:  # set for an earlier head: this one has time left
            self._head_timer = self.loop.call_at(due, self._head_timed_out)
            return
        if self._head_bytes:
            self._refuse(408, f"request headers not received within {self.header_timeout:g} s")
        else:
            self._refused = True
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse (an unknown method, a broken request line): JSON
        like every other error, not uvicorn's plain text."""
        self._refuse(400, msg)

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self.transport.write(_refusal(status, message))
            self.transport.close()


def bounded_protocol(
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> type[BoundedHttpToolsProtocol]:
    """A :class:`BoundedHttpToolsProtocol` subclass with these limits (uvicorn's ``http=``)."""
    return type("BoundedHttpTools", (BoundedHttpToolsProtocol,),
                {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout,
                 "body_timeout": body_timeout})
