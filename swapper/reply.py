"""One HTTP request's response, sent through one wrapper that records what has gone out.

Every layer that needs to know about the response reads the :class:`Reply`
instead of wrapping ``send`` again: the error guard (has it started?), the
disconnect watch (is it complete? may an error event be appended?) and the
request meter (status, time of the first body byte, the last chunks). So a
body message passes one Python layer on its way to the server, whatever is
watching it (issue 8/10's proxy-CPU budget).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from .errors import ApiError, unavailable
from .stream_protocols import OPENAI, StreamProtocol
from .types import Headers, Receive, Scope, Send

SCOPE_KEY = "swapper.reply"
log = logging.getLogger("swapper")


class Reply:
    """The server's ``send`` for one request, plus what has been sent through it.

    ``extra_headers`` are added to the response head (CORS). ``first_at`` is the
    ``perf_counter`` time of the first non-empty body chunk (0 until then);
    ``prev`` and ``last`` are the last two non-empty chunks.
    """

    __slots__ = ("_extra", "_send", "complete", "first_at", "head", "last", "prev", "status")

    def __init__(self, send: Send, extra_headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self._send = send
        self._extra = list(extra_headers)
        self.status = 0
        self.head: Iterable[tuple[bytes, bytes]] = ()
        self.complete = False
        self.first_at = 0.0
        self.prev = self.last = b""

    @staticmethod
    def of(scope: Scope, send: Send) -> Reply:
        """The reply ``send`` belongs to (the one :func:`open_reply` put in ``scope``), or a
        new one wrapping ``send``."""
        found = scope.get(SCOPE_KEY)
        if isinstance(found, Reply) and getattr(send, "__self__", None) is found:
            return cast(Reply, found)
        return Reply(send)

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body:
                if not self.first_at:
                    self.first_at = time.perf_counter()
                self.prev, self.last = self.last, body
            if not message.get("more_body", False):
                self.complete = True
        elif message["type"] == "http.response.start":
            self.status = message["status"]
            self.head = message.get("headers", ())
            if self._extra:
                message = {**message, "headers": [*self.head, *self._extra]}
        await self._send(message)

    @property
    def started(self) -> bool:
        """The response head has been sent (it carries the status)."""
        return self.status != 0

    def restart_clock(self) -> None:
        """The body sent so far was not the answer (loading keep-alives): its first byte is
        the next one."""
        self.first_at = 0.0

    @property
    def plain_sse(self) -> bool:
        """An uncompressed event stream was started: an error event can be appended."""
        headers = {k.lower(): v for k, v in self.head}
        return (headers.get(b"content-type", b"").startswith(b"text/event-stream")
                and b"content-encoding" not in headers)

    async def end_with_error(self, message: str, protocol: StreamProtocol = OPENAI) -> bool:
        """End an unfinished response visibly: 503 before it started, an error event in the
        protocol's shape in a plain event stream. False when neither applies (the caller lets
        the connection drop)."""
        if not self.started:
            await send_error(self.send, unavailable(message))
        elif self.plain_sse and not self.complete:
            await self.send({"type": "http.response.body", "more_body": False,
                             "body": protocol.error_event(message, "shutdown")})
        return not self.started or self.complete


def open_reply(scope: Scope, send: Send, extra_headers: Iterable[tuple[bytes, bytes]] = ()
               ) -> Reply:
    """The reply of a new HTTP request, kept in its scope so deeper layers find it."""
    reply = Reply(send, extra_headers)
    scope[SCOPE_KEY] = reply
    return reply


DISCONNECT_KEY = "swapper.on_disconnect"
"""Scope key of a server that calls back when the connection is lost
(:mod:`swapper.http_protocol` puts it there as ``None``; a watch puts its callback in)."""

SEND_BUFFER_KEY = "swapper.limit_send_buffer"
"""Scope key of a function that caps the connection's kernel send buffer at about a given
number of bytes (put there by :mod:`swapper.http_protocol`): a long-lived stream to a
client that stops reading then holds that much, not the several MB autotuning allows."""


class DisconnectWatch:
    """Cancels the serving task when the client goes away before ``reply`` is complete.

    Under a server that calls back on a lost connection (``DISCONNECT_KEY`` in the
    scope) this costs a dict write; under any other it is a task reading ``receive``.
    One watch at a time per request (each closes before the next opens).
    """

    def __init__(self, scope: Scope, receive: Receive, reply: Reply) -> None:
        self._task = asyncio.current_task()
        self.reply = reply
        self.disconnected = False
        self._scope = scope
        self._watch: asyncio.Future[None] | None = None
        if DISCONNECT_KEY in scope:
            scope[DISCONNECT_KEY] = self._lost
        else:
            self._watch = asyncio.ensure_future(self._run(receive))

    async def _run(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._lost()

    def _lost(self) -> None:
        if not self.reply.complete and self._task is not None and not self.disconnected:
            self.disconnected = True
            self._task.cancel()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        elif self._scope.get(DISCONNECT_KEY) == self._lost:
            self._scope[DISCONNECT_KEY] = None


async def send_json(send: Send, status: int, payload: Any) -> None:
    await send_bytes(send, status, json.dumps(payload).encode(), "application/json")


async def send_bytes(send: Send, status: int, body: bytes, content_type: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """A whole response: ``body`` with its type, its length and ``headers``."""
    raw: Headers = [(b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


ErrorBody = Callable[[ApiError], bytes]
"""How an error is spelled to the client (OpenAI's envelope unless a protocol says otherwise)."""


def openai_error_body(error: ApiError) -> bytes:
    return error.body()


async def send_error(send: Send, error: ApiError, render: ErrorBody = openai_error_body) -> None:
    await send_bytes(send, error.status, render(error), "application/json",
                     [(k.encode(), v.encode()) for k, v in error.headers.items()])


class ClientGone(Exception):
    """The client disconnected before its request was read: nothing is left to answer."""


async def guarded(reply: Reply, handler: Callable[[Send], Awaitable[None]],
                  render: ErrorBody = openai_error_body) -> None:
    """Run a request handler on ``reply``; an error becomes JSON spelled by ``render`` (when
    nothing was sent yet), never a bare 500; a client gone mid-request ends it quietly."""
    try:
        await handler(reply.send)
    except ClientGone:
        pass
    except ApiError as error:
        if not reply.started:
            await send_error(reply.send, error, render)
    except RecursionError:  # a body nested just shallow enough to parse, too deep to walk
        if not reply.started:
            await send_error(reply.send, ApiError(400, "request body is nested too deeply"),
                             render)
    except Exception:
        log.exception("request failed")
        if not reply.started:
            await send_error(reply.send, ApiError(500, "internal error (see the server log)",
                                                  "internal_error"), render)
