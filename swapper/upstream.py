"""The data-plane HTTP/1.1 client: uvloop/asyncio transports and httptools' C parser.

Chosen by measurement (benchmarks/RESULTS.md): a fresh-connection request costs
about 330 µs of CPU through aiohttp's client and about 105 µs on a raw transport
here, and llama-server closes its socket after every stream, so every streamed
request pays a connect. This client does only what proxying needs: one request
with a known-length body, the response's status and headers, then its body as
it arrives (content-length, chunked or close-delimited, parsed by httptools).
Idle keep-alive connections are pooled per host and port; a request that fails
on a pooled connection before any response byte is retried once on a new one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

Headers = list[tuple[bytes, bytes]]
_HIGH_WATER = 1 << 20  # pause reading the upstream past this many unread body bytes


class UpstreamError(ConnectionError):
    """The upstream could not be reached, or broke before finishing its answer."""


@lru_cache(maxsize=256)
def origin(base_url: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of an ``http://`` base URL."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise UpstreamError(f"unsupported upstream URL {base_url!r} (plain http:// only)")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


class _Connection(asyncio.Protocol):
    """One connection; parses one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reset(head=False)

    def _reset(self, head: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head = head
        self.status = 0
        self.headers: Headers = []
        self.got_bytes = False
        self.close_delimited = False
        self.headers_done = asyncio.get_running_loop().create_future()
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.wakeup: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad HTTP from upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.close_delimited and exc is None:  # its body ends with the connection
            self.on_message_complete()
        if not self.complete:
            self._fail(UpstreamError(f"upstream closed the connection{f': {exc}' if exc else ''}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        names = {name.lower(): value.lower() for name, value in self.headers}
        self.close_delimited = (b"content-length" not in names
                                and b"chunked" not in names.get(b"transfer-encoding", b""))
        if not self.headers_done.done():
            self.headers_done.set_result(None)
        if self.head:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callbacks
        self.complete = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        self.error = error
        if not self.headers_done.done():
            self.headers_done.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    async def next_chunk(self) -> bytes | None:
        """All body bytes received so far (waiting for some), or None at the end.

        Raises UpstreamError if the answer broke off.
        """
        while not self.body:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            self.wakeup = asyncio.get_running_loop().create_future()
            await self.wakeup
        chunk = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()  # everything already here goes out as one piece
        self.buffered = 0
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        return chunk


class UpstreamResponse:
    """Status, headers and body of one upstream answer."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], conn: _Connection) -> None:
        self._pool, self._key, self._conn = pool, key, conn
        self.status = conn.status
        self.headers = conn.headers

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name.lower() == b"content-type":
                return value.split(b";", 1)[0].strip().decode("latin-1").lower()
        return ""

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._conn.next_chunk()) is not None:
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self, reuse: bool = True) -> None:
        """Return the connection to the pool if it can carry another request, else drop it."""
        conn = self._conn
        if reuse and conn.complete and not conn.closed and conn.keep_alive:
            self._pool.give_back(self._key, conn)
        elif conn.transport is not None:
            conn.transport.abort()


class UpstreamPool:
    """Keep-alive connections per (host, port), and the request itself."""

    def __init__(self, connect_timeout: float = 10.0, max_idle: int = 16) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    def give_back(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def _pooled(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Connection, *key),
                                             self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]}: {exc or 'timed out'}") from exc
        return conn

    async def request(self, method: str, host: str, port: int, target: str, headers: Headers,
                      body: bytes) -> UpstreamResponse:
        """Send one request; returns once the response's headers arrived."""
        key = (host, port)
        head = b"".join([f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         f"Content-Length: {len(body)}\r\n".encode("latin-1"),
                         *(k + b": " + v + b"\r\n" for k, v in headers), b"\r\n"])
        pooled = self._pooled(key)
        for conn in (pooled, None) if pooled is not None else (None,):
            conn = conn or await self._connect(key)
            conn._reset(head=method == "HEAD")
            assert conn.transport is not None
            conn.transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                conn.transport.write(body)
            try:
                await conn.headers_done
            except UpstreamError:
                if conn is pooled and not conn.got_bytes:
                    continue  # the server closed the idle connection: retry on a fresh one
                raise
            except BaseException:
                if conn.transport is not None:
                    conn.transport.abort()
                raise
            return UpstreamResponse(self, key, conn)
        raise AssertionError("unreachable")

    async def status(self, url: str, timeout: float) -> int | None:
        """GET ``url`` and return its status, or None if it did not answer in time."""
        resp: UpstreamResponse | None = None
        try:
            host, port, path = origin(url)
            resp = await asyncio.wait_for(self.request("GET", host, port, path or "/", [], b""),
                                          timeout)
            await asyncio.wait_for(resp.read(), timeout)
        except (UpstreamError, asyncio.TimeoutError):
            if resp is not None:
                resp.close(reuse=False)
            return None
        resp.close()
        return resp.status

    def discard(self, base_url: str) -> None:
        """Close the idle connections to one upstream (before stopping it: an open
        keep-alive connection makes llama-server linger on shutdown)."""
        try:
            key = origin(base_url)[:2]
        except UpstreamError:
            return
        for conn in self._idle.pop(key, []):
            if conn.transport is not None:
                conn.transport.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
