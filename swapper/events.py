"""One small in-process event bus: logs, metrics, /events and the CLI read the same facts.

Readers that stream it (``GET /api/events``) follow one :class:`FrameRing` each with a
cursor, so their cost does not grow with their number or their slowness.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

log = logging.getLogger("swapper")
F = TypeVar("F", bound=Callable[..., None])
RING_EVENTS = 1000
RING_BYTES = 1 << 20
"""How far a streaming reader may lag: this many frames or bytes unread, then it is dropped."""
RING_READERS = 256
"""Readers of one stream at once (``/api/events``, one tier's ``/logs/stream``): each holds a
connection and its capped socket buffer, so together at most ~40 MB; one more is a 503."""
SHUTTING_DOWN = "shutting_down"
"""The event published when the server starts shutting down: live streams end on it."""


class Event:
    """Something that happened: a state change, a swap, a routing decision (read-only by
    convention; a plain slotted class because one is made per request)."""

    __slots__ = ("fields", "kind", "ts")

    def __init__(self, kind: str, fields: dict[str, Any] | None = None,
                 ts: float | None = None) -> None:
        self.kind = kind
        self.fields = fields if fields is not None else {}
        self.ts = time.time() if ts is None else ts

    def __repr__(self) -> str:
        return f"Event({self.kind!r}, {self.fields!r}, {self.ts!r})"

    def as_dict(self) -> dict[str, Any]:
        return {"ts": round(self.ts, 3), "kind": self.kind, **self.fields}


Subscriber = Callable[[Event], None]


class Listeners(Generic[F]):
    """Callbacks to call in turn: ``all`` is replaced, never changed in place, so a callback
    may add or remove one while they are being called."""

    def __init__(self) -> None:
        self.all: tuple[F, ...] = ()

    def add(self, fn: F) -> Callable[[], None]:
        """Add ``fn``; returns a function that removes it."""
        self.all += (fn,)

        def remove() -> None:
            listeners = list(self.all)
            listeners.remove(fn)
            self.all = tuple(listeners)
        return remove


class EventBus:
    """Publish/subscribe with a bounded history of recent events."""

    def __init__(self, history: int = 1000) -> None:
        self._subscribers = Listeners[Subscriber]()
        self.recent: deque[Event] = deque(maxlen=history)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        return self._subscribers.add(fn)

    def publish(self, kind: str, **fields: Any) -> None:
        event = Event(kind, fields)
        self.recent.append(event)
        for fn in self._subscribers.all:
            try:
                fn(event)
            except Exception:  # a broken subscriber must not break the publisher
                log.exception("event subscriber failed")


class Behind(Exception):
    """A reader's cursor fell off the start of a :class:`FrameRing`: it lost frames."""


class FrameRing:
    """The newest frames of one stream, kept once for all its readers (each holds a cursor).

    At most ``max_frames`` frames and ``max_bytes`` bytes (the newest frame always stays);
    older ones fall off, and a reader whose cursor they take along is :class:`Behind`. So the
    memory is the same for one reader or a thousand, slow ones included, and a push costs the
    same (an append, and one wake-up shared by every waiting reader).
    """

    def __init__(self, max_frames: int = RING_EVENTS, max_bytes: int = RING_BYTES) -> None:
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._frames: list[bytes] = []  # kept from _frames[_head] on (compacted now and then)
        self._head = 0
        self._bytes = 0
        self.start = 0
        """The sequence number of the oldest frame kept."""
        self.readers = 0
        """Readers now (:meth:`reader`); with none, a producer need not push."""
        self.closed = False
        """Set by :meth:`close`: no frame comes any more."""
        self._more: asyncio.Future[None] | None = None

    @property
    def end(self) -> int:
        """The sequence number the next frame gets (a new reader's cursor)."""
        return self.start + len(self._frames) - self._head

    def push(self, frame: bytes) -> None:
        """Add ``frame`` for every reader (nothing once the ring is :attr:`closed`)."""
        if self.closed:
            return
        frames = self._frames
        frames.append(frame)
        self._bytes += len(frame)
        while len(frames) - self._head > 1 and (len(frames) - self._head > self.max_frames
                                                 or self._bytes > self.max_bytes):
            self._bytes -= len(frames[self._head])
            self._head += 1
            self.start += 1
        if self._head > self.max_frames:
            del frames[:self._head]
            self._head = 0
        self._wake()

    def close(self) -> None:
        """The stream ends: readers stop once they have read what the ring holds (one that
        joins later, at once), so a server shutting down need not wait for them."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        more, self._more = self._more, None
        if more is not None and not more.done():
            more.set_result(None)

    def read(self, cursor: int, limit: int) -> tuple[bytes, int]:
        """The frames from ``cursor`` on, joined, stopping once ``limit`` bytes are reached
        (at least one frame, if any), and the cursor after them; :class:`Behind` when frames
        at ``cursor`` were dropped."""
        if cursor < self.start:
            raise Behind
        frames = self._frames
        first = at = self._head + cursor - self.start
        size = 0
        while at < len(frames) and size < limit:
            size += len(frames[at])
            at += 1
        return b"".join(frames[first:at]), cursor + at - first

    def more(self) -> asyncio.Future[None]:
        """A future done at the next :meth:`push` (one, shared by every reader waiting)."""
        if self._more is None:
            self._more = asyncio.get_running_loop().create_future()
        return self._more

    @contextlib.contextmanager
    def reader(self) -> Iterator[int]:
        """One reader for the ``with`` block: its cursor (the end now) is yielded; the
        frames are forgotten when the last reader leaves (sequence numbers carry on)."""
        self.readers += 1
        try:
            yield self.end
        finally:
            self.readers -= 1
            if not self.readers:
                self.start = self.end
                self._frames.clear()
                self._head = self._bytes = 0


# One per request: at INFO they would be an access log on the hot path (10 % of the CPU
# under load); they stay visible in GET /events and with --log-level debug.
PER_REQUEST_KINDS = frozenset({"routed", "named", "request_done"})
WARNING_KINDS = frozenset({"session_cache_off"})
"""Logged as warnings, beside every ``*failed`` and ``*exited`` kind."""


def log_events(event: Event) -> None:
    """Subscriber writing each event as one structured (JSON) log line."""
    if event.kind in PER_REQUEST_KINDS:
        level = logging.DEBUG
    elif event.kind.endswith(("failed", "exited")) or event.kind in WARNING_KINDS:
        level = logging.WARNING
    else:
        level = logging.INFO
    if log.isEnabledFor(level):
        log.log(level, json.dumps(event.as_dict(), default=str))
