"""Streaming forwarding of one request to an upstream, straight onto an ASGI ``send``.

The upstream client is :mod:`swapper.upstream` (raw transports and httptools),
chosen by measurement over aiohttp's client. Response bytes pass through
unchanged; only the first SSE event (or a JSON body) is parsed, and only when a
:class:`ResponseHook` asks for it. A connection that carried a stream is never
reused: llama-server closes it after every stream although it advertises
keep-alive.

A body the upstream cuts off (or stops sending for the model's idle timeout)
never looks complete to the client: a stream that its protocol does not call
complete (:mod:`swapper.stream_protocols`) gets an error event in that
protocol's shape, any other body (or a compressed stream, where an event would
corrupt it) an aborted connection. An error answer that is not JSON (an HTML page
from a proxy in between) becomes the stack's JSON error with the upstream's status
and a short excerpt, except on the raw ``/upstream/`` routes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .config import Timeouts
from .errors import ApiError, shown
from .stream_protocols import EVENT_END, RAW, EndWatch, OpeningGuard, StreamProtocol, protocol_for
from .types import Headers, Send
from .upstream import BadTarget, UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout, origin

log = logging.getLogger("swapper")

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"accept-encoding",
    b"expect", b"proxy-connection",
})
_DROP_RESPONSE = HOP_BY_HOP - {b"content-length"}
_DONE = b"data: [DONE]"
_NO_BUFFERING = (b"x-accel-buffering", b"no")


@dataclass(frozen=True)
class Intercepted:
    """An upstream answer held back (not sent) so the caller can decide what to do."""

    status: int
    body: bytes
    headers: Headers


class ResponseHook(Protocol):
    """Rewrites the first streamed event and non-streamed JSON bodies (e.g. a tier name)."""

    def event_bytes(self, data: bytes) -> bytes | None:
        """An SSE ``data:`` value rewritten without decoding it (one pass over the bytes), or
        None when that cannot be done safely: :meth:`event` then gets it decoded."""

    def event(self, data: dict[str, Any]) -> bool:
        """Modify a decoded SSE ``data:`` object in place; True once it was the one to change."""

    def body(self, data: dict[str, Any]) -> None:
        """Modify a decoded JSON response body in place."""


@dataclass(frozen=True, slots=True)
class Hooks:
    """How an upstream answer reaches the client.

    ``rewrite`` rewrites its first event or JSON body; ``extra_headers`` go on its head;
    an answer whose status is in ``intercept`` is held back (returned, not sent);
    ``protocol`` says when an event stream is complete (default: by the request's path).
    """

    rewrite: ResponseHook | None = None
    extra_headers: Sequence[tuple[bytes, bytes]] = ()
    intercept: frozenset[int] = frozenset()
    protocol: StreamProtocol | None = None


NO_HOOKS = Hooks()


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request to forward: ``method``, ``target`` (path and query) on ``base_url`` with
    ``headers`` and ``body``, within ``timeouts``; its answer handled by ``hooks``. Built once
    per request: the streaming loops read none of it per chunk."""

    method: str
    base_url: str
    target: str
    headers: Headers
    body: bytes
    timeouts: Timeouts
    hooks: Hooks = NO_HOOKS


def _end_to_end(raw: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes]) -> Headers:
    """``raw`` minus the ``drop`` names (``connection`` among them) and every header its
    ``Connection`` headers name."""
    kept: Headers = []
    named: list[bytes] = []
    for key, value in raw:
        name = key.lower()
        if name not in drop:
            kept.append((key, value))
        elif name == b"connection":
            named.append(value)
    if named:
        tokens = {token.strip().lower() for value in named for token in value.split(b",")}
        if not tokens <= drop:  # "keep-alive", "close": already dropped, no second pass
            kept = [(k, v) for k, v in kept if k.lower() not in tokens]
    return kept


_IDENTITY = (b"accept-encoding", b"identity")


def forward_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Client request headers minus hop-by-hop ones, asking for an uncompressed answer: bytes
    pass through, and a response whose head went out early (a loading keep-alive) could not
    declare an encoding any more."""
    headers = _end_to_end(raw, HOP_BY_HOP)
    headers.append(_IDENTITY)
    return headers


def _response_headers(resp: UpstreamResponse, keep_length: bool) -> Headers:
    return _end_to_end(resp.headers, _DROP_RESPONSE if keep_length else HOP_BY_HOP)


def _api_error(exc: UpstreamError, what: str) -> ApiError:
    """504 for a timeout, else 502."""
    if isinstance(exc, UpstreamTimeout):
        return ApiError(504, f"{what}: {exc}", "upstream_timeout")
    return ApiError(502, f"{what}: {exc}", "upstream_error")


def _abort(exc: UpstreamError) -> ApiError:
    """The error that leaves the client's response incomplete (the server drops the connection)."""
    log.warning("upstream failed after the response started (%s); client connection dropped", exc)
    return _api_error(exc, "upstream failed mid-answer")


class UpstreamClient:
    """Forwards requests over one pool of upstream connections."""

    def __init__(self, pool: UpstreamPool | None = None) -> None:
        self.pool = pool or UpstreamPool()

    async def close(self) -> None:
        self.pool.close()

    async def forward(self, request: UpstreamRequest, send: Send) -> Intercepted | None:
        """Send ``request`` upstream and stream the answer to ``send`` as its hooks say (an
        intercepted answer is returned instead of sent)."""
        hooks = request.hooks
        extra_headers = hooks.extra_headers
        try:
            host, port, prefix = origin(request.base_url)
            resp = await self.pool.request(request.method, host, port, prefix + request.target,
                                           request.headers, request.body, request.timeouts)
        except UpstreamError as exc:
            raise _api_error(exc, f"upstream {request.base_url} failed") from exc
        except BadTarget as exc:
            raise ApiError(400, str(exc)) from None
        reuse = False
        try:
            if resp.status >= 400 and hooks.protocol is not RAW and not _is_json(resp.content_type):
                raise await _foreign_error(resp)  # e.g. a proxy's HTML page: not for clients
            if resp.status in hooks.intercept:
                answer = Intercepted(resp.status, await _read(resp), _response_headers(resp, True))
            elif resp.content_type == "text/event-stream":
                await _stream_sse(resp, send, hooks.rewrite, extra_headers,
                                  hooks.protocol or protocol_for(request.target))
                answer = None
            elif hooks.rewrite is not None and resp.content_type == "application/json":
                await _send_rewritten_json(resp, send, hooks.rewrite, extra_headers)
                answer, reuse = None, True
            else:
                await _stream_plain(resp, send, extra_headers)
                answer, reuse = None, True
        finally:
            resp.close(reuse)
        return answer


EXCERPT_READ = 4096
EXCERPT_CHARS = 200
_TAG = re.compile(r"<[^>]*>|&[a-z]+;")
_SPACE = re.compile(r"\s+")


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


async def _foreign_error(resp: UpstreamResponse) -> ApiError:
    """An error answer that is not JSON (an HTML page, plain text) as the stack's own JSON
    error: the upstream's status, and the start of its text without markup (at most
    :data:`EXCERPT_READ` bytes are read; the connection is then dropped)."""
    raw = b""
    try:
        while len(raw) < EXCERPT_READ and (chunk := await resp.next_chunk()) is not None:
            raw += chunk
    except UpstreamError:
        pass  # the excerpt is what arrived
    text = _SPACE.sub(" ", _TAG.sub(" ", raw[:EXCERPT_READ].decode("utf-8", "replace"))).strip()
    excerpt = text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "")
    return ApiError(resp.status, f"upstream answered {resp.status} with "
                                 f"{shown(resp.content_type) or 'no content type'}: {excerpt}",
                    "upstream_error")


async def _read(resp: UpstreamResponse) -> bytes:
    try:
        return await resp.read()
    except UpstreamError as exc:
        raise _api_error(exc, "upstream failed while answering") from exc


async def _start(send: Send, status: int, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _stream_plain(resp: UpstreamResponse, send: Send,
                        extra: Iterable[tuple[bytes, bytes]]) -> None:
    await _start(send, resp.status, _response_headers(resp, True) + list(extra))
    last = b""
    try:
        while (chunk := await resp.next_chunk()) is not None:
            if resp.complete:  # the last piece goes out with the end: one write, not two
                last = chunk
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as exc:
        raise _abort(exc) from exc
    await send({"type": "http.response.body", "body": last, "more_body": False})


async def _send_rewritten_json(resp: UpstreamResponse, send: Send, hook: ResponseHook,
                               extra: Iterable[tuple[bytes, bytes]]) -> None:
    raw = await _read(resp)
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict) and resp.status < 400:
        hook.body(data)
        raw = json.dumps(data, ensure_ascii=False).encode()
    headers = [*_response_headers(resp, False), (b"content-length", str(len(raw)).encode())]
    await _start(send, resp.status, headers + list(extra))
    await send({"type": "http.response.body", "body": raw, "more_body": False})


class _FirstEventRewriter:
    """Buffers the start of an SSE stream until one event is complete, then rewrites it.

    It gives up (passing bytes through untouched) after ``LIMIT`` bytes without a
    rewritable event, so an unusual stream is never held back.
    """

    LIMIT = 16384

    def __init__(self, hook: ResponseHook) -> None:
        self.hook = hook
        self.pending = b""
        self.seen = 0
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return chunk
        self.pending += chunk
        self.seen += len(chunk)
        out = b""
        while not self.done and (end := EVENT_END.search(self.pending)):
            event, self.pending = self.pending[:end.start()], self.pending[end.end():]
            out += self._rewrite(event) + end.group()
        if self.seen > self.LIMIT:
            self.done = True
        if self.done:
            out += self.pending
            self.pending = b""
        return out

    def _rewrite(self, event: bytes) -> bytes:
        """Rewrite an event's one-line ``data:`` field (after any ``event:`` line)."""
        start = 0 if event.startswith(b"data: ") else event.find(b"\ndata: ") + 1
        head, line = event[:start], event[start:]
        if not line.startswith(b"data: ") or line == _DONE or b"\n" in line:
            return event
        value = line[6:]
        rewritten = self.hook.event_bytes(value)
        if rewritten is not None:
            self.done = True
            return head + b"data: " + rewritten
        try:
            data = json.loads(value)
        except ValueError:
            return event
        if isinstance(data, dict) and self.hook.event(data):
            self.done = True
            return head + b"data: " + json.dumps(data, ensure_ascii=False).encode()
        return event


def _sse_headers(resp: UpstreamResponse, extra: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The upstream's headers plus ``extra``, with exactly one ``X-Accel-Buffering``."""
    headers = _response_headers(resp, False) + list(extra)
    for key, _ in headers:
        if key.lower() == _NO_BUFFERING[0]:
            return headers
    headers.append(_NO_BUFFERING)
    return headers


async def _stream_sse(resp: UpstreamResponse, send: Send, hook: ResponseHook | None,
                      extra: Iterable[tuple[bytes, bytes]], protocol: StreamProtocol) -> None:
    await _start(send, resp.status, _sse_headers(resp, extra))
    rewriter = _FirstEventRewriter(hook) if hook is not None else None
    compressed = resp.header(b"content-encoding") not in ("", "identity")  # the end unreadable
    ended = EndWatch(protocol)
    opening = OpeningGuard(RAW if compressed or resp.status >= 400 else protocol)
    last = b""
    try:
        while (chunk := await resp.next_chunk()) is not None:
            ended.feed(chunk)
            chunk = opening.feed(chunk)
            if rewriter is not None:
                chunk = rewriter.feed(chunk)
            if resp.complete:  # the last piece goes out with the end: one write, not two
                last = chunk
                break
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        ended_cleanly = ended.seen or resp.status >= 400 or compressed
        problem = "" if ended_cleanly else (
            f"upstream ended the {protocol.name} stream before its final event")
        code = "upstream_error"
    except UpstreamError as exc:  # a break after the final event lost nothing
        if compressed:  # an event appended to compressed bytes would be garbage
            raise _abort(exc) from exc
        lost_nothing = ended.seen and protocol.end is not None
        problem = "" if lost_nothing else f"upstream failed mid-stream: {exc}"
        code = "upstream_timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
    held = opening.flush()  # a stream that ended inside its first event
    if rewriter is not None:
        held = rewriter.feed(held) + (b"" if rewriter.done else rewriter.pending)
    final = last + held
    if problem:  # never end a broken stream cleanly: opencode would re-send forever
        final += protocol.error_event(problem, code)
    await send({"type": "http.response.body", "body": final, "more_body": False})
