"""Streaming forwarding of one request to an upstream, straight onto an ASGI ``send``.

The upstream client is aiohttp's: measured here it costs about a third of
httpx's CPU per request and holds up under concurrent streams. Response bytes
pass through unchanged; only the first SSE event (or a JSON body) is parsed,
and only when a :class:`ResponseHook` asks for it.

llama-server closes its socket after every streamed response although it
advertises keep-alive, so a connection that carried a stream is closed rather
than pooled, and a request that fails on a stale pooled connection before any
response arrived is retried once on a fresh one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from .errors import ApiError, sse_error_event

Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
})
_DROP_RESPONSE = HOP_BY_HOP - {"content-length"}
_DONE = b"data: [DONE]"


@dataclass(frozen=True)
class Intercepted:
    """An upstream answer held back (not sent) so the caller can decide what to do."""

    status: int
    body: bytes
    headers: Headers


class ResponseHook(Protocol):
    """Rewrites the first streamed event and non-streamed JSON bodies (e.g. a tier name)."""

    def event(self, data: dict[str, Any]) -> bool:
        """Modify a decoded SSE ``data:`` object in place; True once it was the one to change."""

    def body(self, data: dict[str, Any]) -> None:
        """Modify a decoded JSON response body in place."""


def forward_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Client request headers minus hop-by-hop ones (and compression: we pass bytes through)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in raw
            if k.decode("latin-1").lower() not in HOP_BY_HOP}


def _response_headers(resp: aiohttp.ClientResponse, keep_length: bool) -> Headers:
    drop = _DROP_RESPONSE if keep_length else HOP_BY_HOP
    return [(k, v) for k, v in resp.raw_headers if k.decode("latin-1").lower() not in drop]


class UpstreamClient:
    """One pooled aiohttp session shared by every model."""

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                              sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0),
                auto_decompress=False, timeout=self._timeout, skip_auto_headers=("User-Agent",))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _open(self, method: str, url: str, headers: dict[str, str],
                    body: bytes) -> aiohttp.ClientResponse:
        for attempt in (1, 2):
            try:
                return await self.session.request(method, url, headers=headers, data=body,
                                                  allow_redirects=False)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise ApiError(502, f"upstream {url} failed: {exc}", "upstream_error") from exc
            except asyncio.TimeoutError as exc:
                raise ApiError(504, f"upstream {url} timed out", "upstream_timeout") from exc
            except aiohttp.ClientError as exc:
                raise ApiError(502, f"upstream {url} failed: {exc}", "upstream_error") from exc
        raise AssertionError("unreachable")

    async def forward(self, method: str, url: str, headers: dict[str, str], body: bytes,
                      send: Send, hook: ResponseHook | None = None, extra_headers: Headers = (),
                      intercept: frozenset[int] = frozenset()) -> Intercepted | None:
        """Send the request upstream and stream the answer to ``send``.

        An answer whose status is in ``intercept`` is returned instead of sent.
        """
        resp = await self._open(method, url, headers, body)
        try:
            if resp.status in intercept:
                return Intercepted(resp.status, await resp.read(), _response_headers(resp, True))
            if resp.content_type == "text/event-stream":
                await _stream_sse(resp, send, hook, extra_headers)
                resp.close()  # llama-server closes after a stream: never pool this connection
            elif hook is not None and resp.content_type == "application/json":
                await _send_rewritten_json(resp, send, hook, extra_headers)
            else:
                await _stream_plain(resp, send, extra_headers)
            return None
        except BaseException:
            resp.close()
            raise
        finally:
            resp.release()


async def _start(send: Send, status: int, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _stream_plain(resp: aiohttp.ClientResponse, send: Send, extra: Headers) -> None:
    await _start(send, resp.status, _response_headers(resp, True) + list(extra))
    try:
        async for chunk in resp.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        pass  # content-length/chunking tells a plain-HTTP client the body was cut
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_rewritten_json(resp: aiohttp.ClientResponse, send: Send, hook: ResponseHook,
                               extra: Headers) -> None:
    try:
        raw = await resp.read()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        raise ApiError(502, f"upstream failed while answering: {exc}", "upstream_error") from exc
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict) and resp.status < 400:
        hook.body(data)
        raw = json.dumps(data, ensure_ascii=False).encode()
    headers = _response_headers(resp, False) + [(b"content-length", str(len(raw)).encode())]
    await _start(send, resp.status, headers + list(extra))
    await send({"type": "http.response.body", "body": raw, "more_body": False})


class _FirstEventRewriter:
    """Buffers the start of an SSE stream until one event is complete, then rewrites it."""

    def __init__(self, hook: ResponseHook) -> None:
        self.hook = hook
        self.pending = b""
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return chunk
        self.pending += chunk
        out = b""
        while not self.done and b"\n\n" in self.pending:
            event, self.pending = self.pending.split(b"\n\n", 1)
            out += self._rewrite(event) + b"\n\n"
        if self.done:
            out += self.pending
            self.pending = b""
        return out

    def _rewrite(self, event: bytes) -> bytes:
        if not event.startswith(b"data: ") or event == _DONE:
            return event
        try:
            data = json.loads(event[6:])
        except ValueError:
            return event
        if isinstance(data, dict) and self.hook.event(data):
            self.done = True
            return b"data: " + json.dumps(data, ensure_ascii=False).encode()
        return event


async def _stream_sse(resp: aiohttp.ClientResponse, send: Send, hook: ResponseHook | None,
                      extra: Headers) -> None:
    headers = _response_headers(resp, False) + [(b"x-accel-buffering", b"no")] + list(extra)
    await _start(send, resp.status, headers)
    rewriter = _FirstEventRewriter(hook) if hook is not None else None
    tail = b""
    try:
        async for chunk in resp.content.iter_any():
            tail = (tail + chunk)[-32:]
            if rewriter is not None:
                chunk = rewriter.feed(chunk)
                if not chunk:
                    continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        ended_cleanly = _DONE in tail or resp.status >= 400
        problem = "" if ended_cleanly else "upstream ended the stream without [DONE]"
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        problem = f"upstream failed mid-stream: {exc or type(exc).__name__}"
    final = rewriter.pending if rewriter is not None and not rewriter.done else b""
    if problem:  # never end a broken stream cleanly: opencode would re-send forever
        final += sse_error_event(problem)
    await send({"type": "http.response.body", "body": final, "more_body": False})
