"""A streaming request for a cold model is answered at once and kept alive while it loads.

The response (200, ``text/event-stream``) starts before the load: an SSE comment
at once, then one every :data:`TICK` seconds, so a client's header and chunk
timeouts never fire. With the model's ``send_loading_state`` (llama-swap's
``sendLoadingState``) the ticks are also ``reasoning_content`` deltas saying
what loads and for how long. Once the model is ready the upstream's stream
follows on the same response; its own response head is dropped, so nothing it
declares there may shape the bytes: a gzip or deflate body (the upstream is asked
for identity; it may not listen) is decoded, any other content-coding ends the
stream with an error event. A failed load, or an upstream error answer, ends the
stream with an SSE error event (never a clean end, so clients do not take it for
an empty answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import ApiError, sse_error_event
from .types import Send

TICK = 1.0
SCOPE_KEY = "swapper.loading"
STREAMING_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
PIECE = 64 * 1024
"""Decoded bytes per piece: a small compressed body that inflates hugely goes out bit by bit."""
ERROR_BYTES = 4096
"""The start of an upstream's error answer kept for the error event."""
_WBITS = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}  # zlib's window bits per coding


class _Decoder:
    """Undoes a gzip or deflate content-coding incrementally, in :data:`PIECE`-sized pieces."""

    def __init__(self, coding: bytes) -> None:
        self._z = zlib.decompressobj(_WBITS[coding])

    def pieces(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``data`` (zlib.error if it is not what the coding says)."""
        while data:
            out = self._z.decompress(data, PIECE)
            data = self._z.unconsumed_tail
            if out:
                yield out


def _coding(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The response's content-coding, lower case (b"" for none or identity)."""
    for key, value in headers:
        if key.lower() == b"content-encoding":
            coding = value.strip().lower()
            return b"" if coding == b"identity" else coding
    return b""


def wants_stream(path: str, data: dict[str, Any] | None) -> bool:
    """A JSON chat/completions request asking for a streamed answer."""
    return path in STREAMING_PATHS and data is not None and data.get("stream") is True


def _progress_chunk(model: str, text: str) -> bytes:
    chunk = {"id": "chatcmpl-loading", "object": "chat.completion.chunk",
             "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": None,
                                                "reasoning_content": text},
                          "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class LoadingStream:
    """One client's early-started stream (kept in the ASGI scope, so a retry reuses it)."""

    def __init__(self, send: Send, model: str, progress: bool, chat: bool) -> None:
        self._send = send
        self.model = model
        self.progress = progress and chat
        self._t0 = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._error: bytearray | None = None
        self._decoder: _Decoder | None = None
        self._ended = False
        self.status = 0
        """The upstream's status (its head is not sent: the client already has one)."""

    async def begin(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the response head and the first keep-alive now; tick until :meth:`ready`."""
        await self._send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"), *headers]})
        await self._body(self._tick_bytes(first=True))
        self._ticker = asyncio.ensure_future(self._tick())

    def _tick_bytes(self, first: bool = False) -> bytes:
        waited = time.monotonic() - self._t0
        comment = f": loading {self.model} ({waited:.0f} s)\n\n".encode()
        if not self.progress:
            return comment
        text = f"Loading model {self.model}…\n" if first else f"still loading ({waited:.0f} s)\n"
        return comment + _progress_chunk(self.model, text)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            await self._body(self._tick_bytes())

    async def _body(self, data: bytes, more: bool = True) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def ready(self) -> None:
        """Stop the keep-alives (the model is ready, or the request ended)."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._ticker
            self._ticker = None

    async def fail(self, error: ApiError) -> None:
        """End the stream with ``error`` as an SSE error event (unless it has ended)."""
        await self.ready()
        if not self._ended:
            self._ended = True
            await self._body(sse_error_event(error.message, error.code or str(error.status)),
                             False)

    async def send(self, message: dict[str, Any]) -> None:
        """The upstream's messages: the head is dropped (a gzip/deflate body decoded), an
        error answer becomes an event."""
        if message["type"] == "http.response.start":
            await self._start(message["status"], _coding(message.get("headers", ())))
            return
        if self._ended:
            return
        if self._error is None and self._decoder is None:
            await self._send(message)
            return
        body = message.get("body", b"")
        try:
            for piece in self._decoder.pieces(body) if self._decoder is not None else [body]:
                if self._error is None:
                    await self._body(piece)
                elif len(self._error) < ERROR_BYTES:  # enough to say what went wrong
                    self._error += piece[:ERROR_BYTES - len(self._error)]
                else:
                    break
        except zlib.error as exc:
            await self._end(f"upstream sent a body its content-encoding does not decode: {exc}")
            return
        if not message.get("more_body", False):
            if self._error is not None:
                await self._end(_message(bytes(self._error)))
            else:
                await self._body(b"", False)

    async def _start(self, status: int, coding: bytes) -> None:
        self.status = status
        if status >= 400:
            self._error = bytearray()
        if coding in _WBITS:
            self._decoder = _Decoder(coding)
        elif coding:
            await self._end(f"upstream answered with content-encoding {coding.decode('latin-1')!r}"
                            ", which cannot be decoded here (the stream had already begun)")

    async def _end(self, message: str) -> None:
        """End the stream with an error event (the rest of the upstream's body is dropped)."""
        self._ended = True
        await self._body(sse_error_event(message[:500], "upstream_error"), False)


def _message(body: bytes) -> str:
    """An upstream error body's message (OpenAI envelope or plain text)."""
    try:
        data = json.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    except ValueError:
        pass
    return body.decode("utf-8", "replace")[:500] or "upstream error"
