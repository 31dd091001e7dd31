"""One small in-process event bus: logs, metrics, /events and the CLI read the same facts."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("swapper")


class Event:
    """Something that happened: a state change, a swap, a routing decision (read-only by
    convention; a plain slotted class because one is made per request)."""

    __slots__ = ("kind", "fields", "ts")

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


class EventBus:
    """Publish/subscribe with a bounded history of recent events."""

    def __init__(self, history: int = 1000) -> None:
        self._subscribers: tuple[Subscriber, ...] = ()  # replaced, never changed in place
        self.recent: deque[Event] = deque(maxlen=history)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self._subscribers += (fn,)

        def unsubscribe() -> None:
            subscribers = list(self._subscribers)
            subscribers.remove(fn)
            self._subscribers = tuple(subscribers)
        return unsubscribe

    def publish(self, kind: str, **fields: Any) -> None:
        event = Event(kind, fields)
        self.recent.append(event)
        for fn in self._subscribers:
            try:
                fn(event)
            except Exception:  # a broken subscriber must not break the publisher
                log.exception("event subscriber failed")


# One per request: at INFO they would be an access log on the hot path (10 % of the CPU
# under load); they stay visible in GET /events and with --log-level debug.
PER_REQUEST_KINDS = frozenset({"routed", "named", "request_done"})


def log_events(event: Event) -> None:
    """Subscriber writing each event as one structured (JSON) log line."""
    if event.kind in PER_REQUEST_KINDS:
        level = logging.DEBUG
    elif event.kind.endswith(("failed", "exited")):
        level = logging.WARNING
    else:
        level = logging.INFO
    if log.isEnabledFor(level):
        log.log(level, json.dumps(event.as_dict(), default=str))
