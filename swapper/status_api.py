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
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from .events import Event
from .observe import Observer

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
LOAD_PREFIX = "/api/models/load/"
KEEPALIVE = 15.0
LOG_POLL = 0.25


def _ui_file(name: str) -> bytes:
    return resources.files("swapper").joinpath("ui").joinpath(name).read_bytes()


class StatusApi:
    """Routes over one manager; :meth:`route` returns False for paths it does not own."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.observer = Observer(manager.bus)
        from .metrics import Metrics  # prometheus_client: only a process that serves loads it
        self.metrics: Metrics = Metrics(manager, manager.bus)

    def snapshot(self) -> dict[str, Any]:
        return self.observer.snapshot(self.manager)

    async def route(self, scope: Scope, receive: Receive, send: Send) -> bool:
        method, path = scope["method"], scope["path"]
        if method == "GET" and path in UI_FILES:
            name, content_type = UI_FILES[path]
            await _send(send, 200, _ui_file(name), content_type, no_cache=True)
        elif method == "GET" and path == "/api/state":
            await _send(send, 200, json.dumps(self.snapshot()).encode(), "application/json")
        elif method == "GET" and path == "/api/events":
            await self._events(receive, send)
        elif method == "POST" and path.startswith(LOAD_PREFIX):
            model = self.manager.load(path.removeprefix(LOAD_PREFIX))
            await _send(send, 202, json.dumps({"loading": model}).encode(), "application/json")
        elif method == "GET" and path == "/metrics":
            from .metrics import CONTENT_TYPE
            await _send(send, 200, self.metrics.render(), CONTENT_TYPE)
        else:
            return False
        return True

    async def _events(self, receive: Receive, send: Send) -> None:
        """SSE: a ``snapshot`` first, then every bus event and every new log line, live."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10000)

        def on_event(event: Event) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event.as_dict())

        unsubscribe = self.manager.bus.subscribe(on_event)
        follows: dict[str, asyncio.Queue[str]] = {}
        disconnected = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]})
            await _event(send, {"kind": "snapshot", **self.snapshot()})
            quiet_since = time.monotonic()
            while not disconnected.done():
                for model, sink in list(self.manager.logs.items()):
                    if model not in follows:
                        follows[model] = sink.follow()
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, disconnected}, timeout=LOG_POLL,
                                   return_when=asyncio.FIRST_COMPLETED)
                items = [getter.result()] if getter.done() else []
                getter.cancel()
                while not queue.empty():
                    items.append(queue.get_nowait())
                for model, lines in follows.items():
                    while not lines.empty():
                        items.append({"kind": "log", "model": model, "line": lines.get_nowait()})
                if items:
                    await send({"type": "http.response.body", "more_body": True,
                                "body": b"".join(_frame(i) for i in items)})
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE:
                    await send({"type": "http.response.body", "body": b": keepalive\n\n",
                                "more_body": True})
                    quiet_since = time.monotonic()
        except OSError:
            pass  # the client went away mid-write
        finally:
            unsubscribe()
            disconnected.cancel()
            for model, lines in follows.items():
                if model in self.manager.logs:
                    self.manager.logs[model].unfollow(lines)
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _frame(item: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(item, default=str).encode() + b"\n\n"


async def _event(send: Send, item: dict[str, Any]) -> None:
    await send({"type": "http.response.body", "body": _frame(item), "more_body": True})


async def _send(send: Send, status: int, body: bytes, content_type: str,
                no_cache: bool = False) -> None:
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode())]
    if no_cache:
        headers.append((b"cache-control", b"no-cache"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})

