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
from collections.abc import Awaitable, Callable, Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from .events import RING_BYTES, RING_EVENTS, Behind, Event, FrameRing
from .observe import Observer
from .reply import SEND_BUFFER_KEY, DisconnectWatch, Reply

if TYPE_CHECKING:
    from .manager import Manager
    from .metrics import Metrics

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Scope = dict[str, Any]
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
    """Routes over one manager; :meth:`route` returns False for paths it does not own."""

    def __init__(self, manager: Manager, endpoints: frozenset[str] = frozenset()) -> None:
        """``endpoints``: the paths the metrics label as themselves (else ``other``)."""
        self.manager = manager
        self.observer = Observer(manager.bus)
        self.feed = LiveFeed(manager)
        from .metrics import Metrics  # prometheus_client: only a process that serves loads it
        self.metrics: Metrics = Metrics(manager, manager.bus, endpoints)

    def snapshot(self) -> dict[str, Any]:
        return self.observer.snapshot(self.manager)

    async def route(self, scope: Scope, receive: Receive, send: Send) -> bool:
        method, path = scope["method"], scope["path"]
        if method == "GET" and path in UI_FILES:
            name, content_type = UI_FILES[path]
            await _send(send, 200, _ui_file(name), content_type, PAGE_HEADERS)
        elif method == "GET" and path == "/api/state":
            await _send(send, 200, json.dumps(self.snapshot()).encode(), "application/json")
        elif method == "GET" and path == "/api/events":
            await self._events(scope, receive, send)
        elif method == "POST" and path.startswith(LOAD_PREFIX):
            model = self.manager.load(path.removeprefix(LOAD_PREFIX))
            await _send(send, 202, json.dumps({"loading": model}).encode(), "application/json")
        elif method == "GET" and path == "/metrics":
            from .metrics import CONTENT_TYPE
            await _send(send, 200, self.metrics.render(), CONTENT_TYPE)
        else:
            return False
        return True

    async def _events(self, scope: Scope, receive: Receive, send: Send) -> None:
        """SSE: a ``snapshot`` first, then every bus event and every new log line, live.

        A reader more than the ring (:data:`~swapper.events.RING_EVENTS` frames or
        :data:`~swapper.events.RING_BYTES` bytes) behind gets a ``dropped`` event and the
        stream ends (the page reconnects for a fresh snapshot). Bytes go out in pieces of
        about :data:`WRITE_BYTES`, each once the socket took the last."""
        reply = Reply.of(scope, send)
        watch = DisconnectWatch(scope, receive, reply)
        limit_send_buffer = scope.get(SEND_BUFFER_KEY)
        if limit_send_buffer is not None:
            limit_send_buffer(SEND_BUFFER)
        with self.feed.reader() as cursor:
            try:
                await reply.send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no")]})
                # the state as of ``cursor`` (no await in between), not kept once sent
                await _body(reply.send, _frame({"kind": "snapshot", **self.snapshot()}))
                await self._follow(reply.send, cursor)
            except asyncio.CancelledError:
                if not watch.disconnected:
                    raise
            except OSError:
                pass  # the client went away mid-write
            finally:
                watch.close()
                with contextlib.suppress(Exception):
                    await reply.send({"type": "http.response.body", "body": b"",
                                      "more_body": False})

    async def _follow(self, send: Send, cursor: int) -> None:
        """Send the ring's frames from ``cursor`` on, until the reader falls behind."""
        ring = self.feed.ring
        while True:
            try:
                batch, cursor = ring.read(cursor, WRITE_BYTES)
            except Behind:
                await _body(send, _frame({"kind": "dropped", "ts": round(time.time(), 3),
                                          "reason": DROPPED}))
                return
            if batch:
                await _body(send, batch)
                if cursor < ring.end:  # a backlog: one piece per turn of the loop, each reader
                    await asyncio.sleep(0)
            else:  # the wake-up is shared: a cancelled reader must not cancel it
                await asyncio.shield(ring.more())


class LiveFeed:
    """Bus events and children's log lines as SSE frames in one :class:`FrameRing`, each
    encoded once for every ``/api/events`` reader, and only while there is one; a
    keep-alive comment when nothing else came for :data:`KEEPALIVE` seconds."""

    def __init__(self, manager: Manager) -> None:
        self.ring = FrameRing()
        self.readers = 0
        self._trim: asyncio.TimerHandle | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._quiet_end = -1
        manager.bus.subscribe(self._event)
        manager.log_listeners.add(self._lines)

    def _event(self, event: Event) -> None:
        if self.readers:
            self.ring.push(_frame(event.as_dict()))

    def _lines(self, model: str, lines: list[str]) -> None:
        if self.readers:
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
        """One reader for the ``with`` block: its cursor (the ring's end) is yielded; the
        frames are forgotten when the last reader leaves."""
        loop = asyncio.get_running_loop()
        self.readers += 1
        if self._tick is None:
            self._tick = loop.call_later(KEEPALIVE / 2, self._keepalive)
        try:
            yield self.ring.end
        finally:
            self.readers -= 1
            if not self.readers:
                self.ring.clear()
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


async def _send(send: Send, status: int, body: bytes, content_type: str,
                extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})

