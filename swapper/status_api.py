"""The status routes: /ui (the page), /api/state, /api/events (SSE), load, /metrics.

Everything here reads the one event bus and the scheduler, through
:class:`~swapper.observe.Observer` and :class:`~swapper.metrics.Metrics`.
The page itself (``/ui``, ``/ui/app.js``) holds no data, so it needs no API key;
it asks for one when ``/api/state`` answers 401 and then sends it as a bearer
header on every fetch, the event stream included (read with fetch streaming,
not ``EventSource``, which cannot send headers; a key in the URL would land in
logs and history).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from .errors import unavailable
from .events import RING_BYTES, RING_EVENTS, RING_READERS, SHUTTING_DOWN, Behind, Event, FrameRing
from .observe import Observer
from .reply import SEND_BUFFER_KEY, DisconnectWatch, Reply, send_bytes
from .routes import POST, Route, path_param, routes
from .types import Receive, Scope, Send

if TYPE_CHECKING:
    from .manager import Manager
    from .metrics import Metrics

UI_FILES = {"/ui": ("index.html", "text/html; charset=utf-8"),
            "/ui/": ("index.html", "text/html; charset=utf-8"),
            "/ui/app.js": ("app.js", "text/javascript; charset=utf-8")}
PUBLIC_PATHS = frozenset({"/health", *UI_FILES})
PAGE_HEADERS = (
    (b"cache-control", b"no-cache"),
    # its own script and fetches only (inline styles: the page's one <style> and bar widths)
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; connect-src 'self'; "
     b"style-src 'self' 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'; "
     b"frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
"""Headers of the page's files: no framing (clickjacking the load/unload buttons), no sniffing."""
LOAD_PREFIX = "/api/models/load/"
KEEPALIVE = 15.0
WRITE_BYTES = 16 * 1024
SEND_BUFFER = 128 * 1024
"""The kernel's send buffer of an event stream's connection (bytes)."""
TRIM_DELAY = 1.0
DROPPED = (f"fell behind: more than {RING_EVENTS} events or {RING_BYTES // 1024} KiB unread; "
           "reconnect for a fresh snapshot")


def _ui_file(name: str) -> bytes:
    return resources.files("swapper").joinpath("ui").joinpath(name).read_bytes()


class StatusApi:
    """The status routes over one manager (:attr:`routes`)."""

    def __init__(self, manager: Manager, endpoints: frozenset[str] = frozenset()) -> None:
        """``endpoints``: the paths the metrics label as themselves (else ``other``)."""
        self.manager = manager
        self.observer = Observer(manager.bus)
        self.feed = LiveFeed(manager)
        from .metrics import Metrics  # prometheus_client: only a process that serves loads it
        self.metrics: Metrics = Metrics(manager, manager.bus, endpoints)
        self.routes = [
            *routes(UI_FILES, self._page),
            Route("/api/state", self._state),
            Route("/api/events", self._events),
            Route(LOAD_PREFIX + "{model:path}", self._load, POST),
            Route("/metrics", self._metrics),
        ]

    def snapshot(self) -> dict[str, Any]:
        return self.observer.snapshot(self.manager)

    async def _page(self, scope: Scope, receive: Receive, send: Send) -> None:
        name, content_type = UI_FILES[scope["path"]]
        await send_bytes(send, 200, _ui_file(name), content_type, PAGE_HEADERS)

    async def _state(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, json.dumps(self.snapshot()).encode(), "application/json")

    async def _load(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = self.manager.load(path_param(scope, "model"))
        await send_bytes(send, 202, json.dumps({"loading": model}).encode(), "application/json")

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        from .metrics import CONTENT_TYPE
        await send_bytes(send, 200, self.metrics.render(), CONTENT_TYPE)

    async def _events(self, scope: Scope, receive: Receive, send: Send) -> None:
        """SSE: a ``snapshot`` first, then every bus event and every new log line, live; a
        reader that falls behind gets a ``dropped`` event (:func:`stream_ring`)."""
        def snapshot() -> list[bytes]:
            return [_frame({"kind": "snapshot", **self.snapshot()})]

        def dropped() -> bytes:
            return _frame({"kind": "dropped", "ts": round(time.time(), 3), "reason": DROPPED})

        await stream_ring(scope, receive, send, self.feed.ring, self.feed.reader,
                          b"text/event-stream", snapshot, dropped)


Bytes = Callable[[], bytes]


async def stream_ring(scope: Scope, receive: Receive, send: Send, ring: FrameRing,
                      join: Callable[[], contextlib.AbstractContextManager[int]],
                      content_type: bytes, first: Callable[[], Iterable[bytes]],
                      behind: Bytes) -> None:
    """Stream one reader of ``ring`` (``join`` makes it one, yielding its cursor): the
    pieces of ``first()`` (called as of that cursor), then every frame from the cursor on,
    each piece once the socket took the last, until the client leaves, the ring is closed
    (the server is shutting down: the response ends once its frames are sent) or the
    reader falls behind it (:data:`~swapper.events.RING_EVENTS` frames or
    :data:`~swapper.events.RING_BYTES` bytes; then ``behind()`` ends the response).

    A backlog goes out :data:`WRITE_BYTES` at a time, one write per reader per turn of the
    loop, and the connection's kernel send buffer is capped at :data:`SEND_BUFFER`: a
    reader that stops reading holds that much and the socket's, never the ring's copy.
    With :data:`~swapper.events.RING_READERS` readers already, a 503 (``Retry-After``)."""
    if ring.readers >= RING_READERS:
        raise unavailable(f"{ring.readers} readers already follow this stream (at most "
                          f"{RING_READERS}); close one", retry_after=5, code="too_many_readers")
    reply = Reply.of(scope, send)
    watch = DisconnectWatch(scope, receive, reply)
    limit_send_buffer = scope.get(SEND_BUFFER_KEY)
    if limit_send_buffer is not None:
        limit_send_buffer(SEND_BUFFER)
    send = reply.send
    with join() as cursor:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", content_type), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]})
            for piece in first():  # called as of ``cursor`` (no await in between)
                await _body(send, piece)
            await _follow(send, ring, cursor, behind)
        except asyncio.CancelledError:
            if not watch.disconnected:
                raise
        except OSError:
            pass  # the client went away mid-write
        finally:
            watch.close()
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _follow(send: Send, ring: FrameRing, cursor: int, behind: Bytes) -> None:
    """Send ``ring``'s frames from ``cursor`` on, until the reader falls behind or has read
    a closed ring to its end."""
    while True:
        try:
            batch, cursor = ring.read(cursor, WRITE_BYTES)
        except Behind:
            await _body(send, behind())
            return
        if batch:
            await _body(send, batch)
            if cursor < ring.end:  # a backlog: one piece per turn of the loop, each reader
                await asyncio.sleep(0)
        elif ring.closed:
            return
        else:  # the wake-up is shared: a cancelled reader must not cancel it
            await asyncio.shield(ring.more())


class LiveFeed:
    """Bus events and children's log lines as SSE frames in one :class:`FrameRing`, each
    encoded once for every ``/api/events`` reader, and only while there is one; a
    keep-alive comment when nothing else came for :data:`KEEPALIVE` seconds. The feed ends
    with the ``shutting_down`` event (:meth:`~swapper.manager.Manager.begin_shutdown`)."""

    def __init__(self, manager: Manager) -> None:
        self.ring = FrameRing()
        self._trim: asyncio.TimerHandle | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._quiet_end = -1
        manager.bus.subscribe(self._event)
        manager.log_listeners.add(self._lines)

    def _event(self, event: Event) -> None:
        if self.ring.readers:
            self.ring.push(_frame(event.as_dict()))
        if event.kind == SHUTTING_DOWN:  # the last event every reader gets
            self.ring.close()

    def _lines(self, model: str, lines: list[str]) -> None:
        if self.ring.readers:
            for line in lines:
                self.ring.push(_frame({"kind": "log", "model": model, "line": line}))

    def _keepalive(self) -> None:
        """Every KEEPALIVE/2 s while there are readers: a comment if nothing came since."""
        if self.ring.end == self._quiet_end:
            self.ring.push(b": keepalive\n\n")
        self._quiet_end = self.ring.end
        self._tick = asyncio.get_running_loop().call_later(KEEPALIVE / 2, self._keepalive)

    @contextlib.contextmanager
    def reader(self) -> Iterator[int]:
        """The ring's :meth:`~FrameRing.reader`, with keep-alives while anyone reads and a
        heap trim once readers leave."""
        loop = asyncio.get_running_loop()
        with self.ring.reader() as cursor:
            if self._tick is None:
                self._tick = loop.call_later(KEEPALIVE / 2, self._keepalive)
            try:
                yield cursor
            finally:
                if self.ring.readers == 1 and self._tick is not None:  # the last one leaves
                    self._tick.cancel()
                    self._tick = None
                if self._trim is None:  # once for a burst of readers leaving
                    self._trim = loop.call_later(TRIM_DELAY, self._trim_heap)

    def _trim_heap(self) -> None:
        """Give the heap pages readers' buffers left free back to the system (glibc keeps
        them otherwise: 200 readers gone would leave their 20 MB of socket buffers)."""
        self._trim = None
        trim = _malloc_trim()
        if trim is not None:
            trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, None on other C libraries."""
    import ctypes  # only once a reader left
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def _frame(item: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(item, default=str).encode() + b"\n\n"


async def _body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})
