"""The data-plane HTTP/1.1 client: uvloop/asyncio transports and httptools' C parser.

Chosen by measurement (benchmarks/RESULTS.md): a fresh-connection request costs
about 330 µs of CPU through aiohttp's client and about 105 µs on a raw transport
here, and llama-server closes its socket after every stream, so every streamed
request pays a connect. This client does only what proxying needs: one request
with a known-length body, the response's status and headers, then its body as
it arrives (content-length, chunked or close-delimited, parsed by httptools).

Contracts: interim 1xx answers are skipped; a final status outside 200-599 (or
101), a response head over ``MAX_HEAD`` bytes, bad HTTP, a cut body and a
timeout (:class:`~swapper.config.Timeouts`) are :class:`UpstreamError`
(:class:`UpstreamTimeout` for the last), and the connection is dropped. Idle
keep-alive connections are pooled per host and port; one that receives a byte
while idle, or any byte past its answer, is discarded, never reused. A request
that fails on a pooled connection before any response byte is retried once on
a new one only when its method is idempotent (a POST may already be running).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

from .config import Timeouts
from .types import Headers

_HIGH_WATER = 1 << 20  # pause reading the upstream past this many unread body bytes
MAX_HEAD = 64 * 1024  # bytes of status line and headers (interim answers included)
POOL_IDLE_LIMIT = 4.0  # seconds; below llama-server's (and uvicorn's) 5 s keep-alive timeout
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")  # would break or extend the request line
NO_TIMEOUTS = Timeouts(0.0, 0.0, 0.0)
DEFAULT_TIMEOUTS = Timeouts()


class UpstreamError(ConnectionError):
    """The upstream could not be reached, or broke before finishing its answer."""


class UpstreamTimeout(UpstreamError):
    """The upstream took longer than one of its :class:`Timeouts`."""


class BadTarget(ValueError):
    """A request target that cannot go on a request line unchanged (a client error)."""


class _ExtraBytes(Exception):
    """Bytes after the end of the answer: the connection is out of step."""


@lru_cache(maxsize=256)
def origin(base_url: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of an ``http://`` base URL (IPv6 hosts without brackets)."""
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError as exc:
        raise UpstreamError(f"bad upstream URL {base_url!r}: {exc}") from None
    if parts.scheme != "http" or not parts.hostname:
        raise UpstreamError(f"unsupported upstream URL {base_url!r} (plain http:// only)")
    return parts.hostname, port or 80, parts.path.rstrip("/")


@lru_cache(maxsize=256)
def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Connection(asyncio.Protocol):
    """One connection; parses one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.idle = False  # in the pool: any byte now means the connection is out of step
        self.idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._limit, self._what, self.last_data = 0.0, "", 0.0
        self._reset(head=False, timeouts=NO_TIMEOUTS)

    def _reset(self, head: bool, timeouts: Timeouts) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head = head
        self.timeouts = timeouts
        self.status = 0
        self.headers: Headers = []
        self.content_type = b""  # the raw first Content-Type value
        self.got_bytes = False
        self.head_bytes = 0  # raw bytes while the head is incomplete
        self.head_size = 0  # parsed header bytes (interim answers included)
        self.in_head = True
        self.close_delimited = False
        self.headers_done = self.loop.create_future()
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.wakeup: asyncio.Future[None] | None = None

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def abort(self) -> None:
        self.closed = True
        self._disarm()
        if self.transport is not None:
            self.transport.abort()

    # -- timeouts: one timer per request, pushed back lazily (no per-chunk timer work) --
    # The response timeout counts from the request sent to the end of the headers; the
    # idle timeout from the last body byte (data_received moves ``last_data`` on). The
    # timer is set once, at the earlier of the two limits, and moved on when it fires
    # early, so a request that ends in time costs one timer and one cancel.

    def _start_clock(self) -> None:
        """The request went out: its response limit runs from now."""
        self._disarm()
        response, idle = self.timeouts.response, self.timeouts.idle
        self._limit, self._what = response, "upstream sent no response headers"
        first = response if idle <= 0 or 0 < response < idle else idle  # earlier positive one
        if first > 0:
            self.last_data = now = self.loop.time()
            self._timer = self.loop.call_at(now + first, self._check_timer)

    def _head_done(self) -> None:
        """The headers arrived: from now on the idle limit applies."""
        self._limit, self._what = self.timeouts.idle, "upstream sent no body bytes"
        if self._timer is not None:
            self.last_data = self.loop.time()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timer(self) -> None:
        now = self.loop.time()
        self._timer = None
        if self._limit <= 0:  # no limit in this phase; the idle one may follow the head
            if self.in_head and self.timeouts.idle > 0:
                self._timer = self.loop.call_at(now + self.timeouts.idle, self._check_timer)
            return
        if self.paused:  # we stopped reading (slow client): the upstream is not idle
            self.last_data = now
        due = self.last_data + self._limit
        if now < due:
            self._timer = self.loop.call_at(due, self._check_timer)
            return
        self._fail(UpstreamTimeout(f"{self._what} within {self._limit:g} s"))
        self.abort()

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.idle:  # an answer nobody asked for: never hand it to the next request
            self.abort()
            return
        self.got_bytes = True
        if self._timer is not None and not self.in_head:
            self.last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.complete:  # bytes past the answer: the answer stands, the connection goes
                self.keep_alive = False
            else:
                self._fail(UpstreamError(f"bad HTTP from upstream: {exc.__cause__ or exc}"))
            self.abort()
            return
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD:
                self._fail(UpstreamError(f"upstream response head larger than {MAX_HEAD} bytes"))
                self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        if self.close_delimited and exc is None and not self.complete:  # body ends with the close
            self.on_message_complete()
        if not self.complete:
            self._fail(UpstreamError(f"upstream closed the connection{f': {exc}' if exc else ''}"))

    # -- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise _ExtraBytes

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim: the final answer follows
            self.headers = []
            return
        self.in_head = False
        if not 200 <= status <= 599 or self.head_size > MAX_HEAD:
            self._fail(UpstreamError(f"upstream answered with invalid status {status}"
                                     if self.head_size <= MAX_HEAD else
                                     f"upstream response head larger than {MAX_HEAD} bytes"))
            raise _ExtraBytes  # stop parsing; data_received drops the connection
        self.status = status
        length, coding, kind = False, b"", b""  # the last Transfer-Encoding, the first type
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = True
            elif lowered == b"transfer-encoding":
                coding = value
            elif lowered == b"content-type" and not kind:
                kind = value
        self.close_delimited = not length and b"chunked" not in coding.lower()
        self.content_type = kind
        self._head_done()
        if not self.headers_done.done():
            self.headers_done.set_result(None)
        if self.head:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.in_head:  # the end of an interim answer
            return
        # only valid inside the callbacks; a HEAD answer's framing is unknown to the parser
        self.keep_alive = self.parser.should_keep_alive() and not self.head
        self.complete = True
        self._disarm()
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if not self.headers_done.done():
            self.headers_done.set_exception(self.error)
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
            self.wakeup = self.loop.create_future()
            await self.wakeup
        chunk = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()  # everything already here goes out as one piece
        self.buffered = 0
        if self.paused and not self.closed and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk


class _Expiry:
    """Cancels the current task after ``seconds`` unless cancelled first: a deadline for
    one await without the task ``asyncio.wait_for`` wraps a coroutine in (issue 8's
    proxy-CPU budget: that task cost about a sixth of a streamed request's CPU here)."""

    __slots__ = ("_fired", "_handle", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self._task = asyncio.current_task()
        self._fired = False
        self._handle = loop.call_later(seconds, self._fire)

    def _fire(self) -> None:
        if self._task is not None and not self._task.done():
            self._fired = True
            self._task.cancel()

    def expired(self) -> bool:
        """Call on CancelledError: True when the deadline alone cancelled the task (its
        cancellation is then withdrawn), False when the cancellation must go on."""
        if not self._fired or self._task is None:
            return False
        uncancel = getattr(self._task, "uncancel", None)  # Python 3.11+
        return uncancel is None or uncancel() == 0

    def cancel(self) -> None:
        self._handle.cancel()


class UpstreamResponse:
    """Status, headers and body of one upstream answer."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], conn: _Connection) -> None:
        self._pool, self._key, self._conn = pool, key, conn
        self.status = conn.status
        self.headers = conn.headers
        self.content_type = conn.content_type.decode("latin-1").split(";", 1)[0].strip().lower()
        """The media type, lower case, without parameters ("" when absent)."""

    def header(self, name: bytes) -> str:
        """The first value of header ``name`` (lower case), or ""."""
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return ""

    @property
    def complete(self) -> bool:
        """The whole answer has arrived and every byte of it was handed out."""
        return self._conn.complete and not self._conn.body

    def next_chunk(self) -> Awaitable[bytes | None]:
        """All body bytes received so far (waiting for some), or None at the end; raises
        UpstreamError if the answer broke off.

        An awaitable, not an async generator: a generator left before its end (the proxy
        sends the last piece with the end of the answer) is finalised through
        ``call_soon_threadsafe`` and a task of its own, costing an eventfd write and read
        and a loop iteration per request.
        """
        return self._conn.next_chunk()

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self._conn.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def close(self, reuse: bool = True) -> None:
        """Return the connection to the pool if it can carry another request, else drop it."""
        conn = self._conn
        if reuse and conn.reusable:
            self._pool.give_back(self._key, conn)
        else:
            conn.abort()


class UpstreamPool:
    """Keep-alive connections per (host, port), and the request itself."""

    def __init__(self, max_idle: int = 16) -> None:
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    def give_back(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < self.max_idle:
            conn.idle, conn.idle_since = True, time.monotonic()
            idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def _pooled(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        too_old = time.monotonic() - POOL_IDLE_LIMIT
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > too_old:
                conn.idle = False
                return conn
            conn.abort()  # the server may be closing it right now
        return None

    async def _connect(self, key: tuple[str, int], timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        expiry = _Expiry(loop, timeout) if timeout > 0 else None
        try:
            _, conn = await loop.create_connection(_Connection, *key)
        except asyncio.CancelledError:
            if expiry is None or not expiry.expired():
                raise
            raise UpstreamTimeout(f"cannot connect to {_host_header(*key)} within {timeout:g} s"
                                  ) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {_host_header(*key)}: {exc}") from exc
        finally:
            if expiry is not None:
                expiry.cancel()
        return conn

    async def request(self, method: str, host: str, port: int, target: str, headers: Headers,
                      body: bytes, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> UpstreamResponse:
        """Send one request; returns once the response's headers arrived.

        Raises BadTarget for a target with a space or control character.
        """
        if _BAD_TARGET.search(target) or not target.startswith("/"):
            raise BadTarget(f"request target {target!r} holds a space or control character")
        key = (host, port)
        head = b"".join([f"{method} {target} HTTP/1.1\r\nHost: {_host_header(host, port)}\r\n"
                         f"Content-Length: {len(body)}\r\n".encode("latin-1"),
                         *(k + b": " + v + b"\r\n" for k, v in headers), b"\r\n"])
        pooled = self._pooled(key)
        retry = pooled is not None and method in IDEMPOTENT
        conn = pooled or await self._connect(key, timeouts.connect)
        while True:
            conn._reset(method == "HEAD", timeouts)
            assert conn.transport is not None
            conn.transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                conn.transport.write(body)
            conn._start_clock()
            try:
                await conn.headers_done
            except UpstreamError as exc:
                conn.abort()
                if retry and not conn.got_bytes and not isinstance(exc, UpstreamTimeout):
                    retry = False  # the server closed the idle connection: once more, fresh
                    conn = await self._connect(key, timeouts.connect)
                    continue
                raise
            except BaseException:
                conn.abort()
                raise
            return UpstreamResponse(self, key, conn)

    async def status(self, url: str, timeout: float) -> int | None:
        """GET ``url`` and return its status, or None if it did not answer in time."""
        resp: UpstreamResponse | None = None
        try:
            host, port, path = origin(url)
            resp = await self.request("GET", host, port, path or "/", [], b"",
                                      Timeouts(timeout, timeout, timeout))
            await resp.read()
        except UpstreamError:
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
