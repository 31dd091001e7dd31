"""Drive an ASGI app in this process: no socket, no server, no child process.

:func:`call` sends one request through the app's ASGI callable and collects the answer.
:class:`FakePool` stands in for the upstream connections (the proxy's own code runs; only
the wire is replaced) and :func:`manager` builds a manager whose children are ready as
soon as they are spawned.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swapper.config import ModelSpec, SwapperConfig
from swapper.events import EventBus
from swapper.identity import Identity
from swapper.logring import LogSink
from swapper.manager import Manager
from swapper.process import ChildProcess
from swapper.reply import DISCONNECT_KEY
from swapper.types import ASGIApp, Headers, Message
from swapper.upstream import UpstreamPool

SERVER = ("127.0.0.1", 10101)
HOST = f"{SERVER[0]}:{SERVER[1]}"


@dataclass
class Answer:
    """What the app sent: the status, the head and the whole body."""

    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), None when absent."""
        return next((v.decode("latin-1") for k, v in self.headers
                     if k.lower() == name.lower().encode()), None)

    def json(self) -> Any:
        return json.loads(self.body)


async def call(app: ASGIApp, method: str, path: str, body: object = b"",
               headers: dict[str, str] | None = None, query: bytes = b"",
               declare_length: bool = True) -> Answer:
    """One request from a local client (``Host: 127.0.0.1:10101``, ``headers`` added);
    a ``body`` that is not bytes is sent as JSON, declared by Content-Length unless
    ``declare_length`` is false (then it arrives in two pieces)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = {"host": HOST, **({"content-length": str(len(raw))} if declare_length and raw else {}),
            **(headers or {})}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
             "method": method, "path": path, "raw_path": path.encode(), "query_string": query,
             "root_path": "", "server": SERVER, "client": ("127.0.0.1", 50000),
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in head.items()],
             DISCONNECT_KEY: None}  # as swapper's own server does: no task watches receive
    half = len(raw) // 2 if not declare_length else len(raw)
    pieces = [raw[:half], raw[half:]] if half < len(raw) else [raw]
    sent: list[Message] = []

    async def receive() -> Message:
        if pieces:
            piece = pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(pieces)}
        await asyncio.Event().wait()  # the client waits for its answer
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_bytes = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], list(start.get("headers", [])), body_bytes)


@dataclass
class Forwarded:
    """One request the proxy sent upstream."""

    method: str
    host: str
    port: int
    target: str
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass
class Canned:
    """An upstream answer: handed out as one chunk, then complete."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes = b'{"object": "chat.completion", "model": "upstream-name", "choices": [' \
                  b'{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}'
    complete: bool = False

    @property
    def headers(self) -> Headers:
        return [(b"content-type", self.content_type.encode()),
                (b"content-length", str(len(self.body)).encode())]

    def header(self, name: bytes) -> str:
        return next((v.decode("latin-1") for k, v in self.headers if k == name), "")

    async def next_chunk(self) -> bytes | None:
        if self.complete:
            return None
        self.complete = True
        return self.body

    async def read(self) -> bytes:
        return await self.next_chunk() or b""

    def close(self, reuse: bool = True) -> None:
        pass


@dataclass
class FakePool:
    """The upstream connections' stand-in: records each request and answers it with a
    fresh copy of ``answer``."""

    answer: Canned = field(default_factory=Canned)
    forwarded: list[Forwarded] = field(default_factory=list)

    async def request(self, method: str, host: str, port: int, target: str, headers: Headers,
                      body: bytes, timeouts: object = None) -> Canned:
        self.forwarded.append(Forwarded(method, host, port, target, headers, body))
        return Canned(self.answer.status, self.answer.content_type, self.answer.body)

    def close(self) -> None:
        pass


_pids = itertools.count(900_000)


class ReadyChild:
    """A model's process that is ready as soon as it is spawned and stops when asked."""

    def __init__(self, spec: ModelSpec, port: int | None, log: LogSink, health_timeout: float,
                 on_exit: Callable[[ChildProcess], None], private_env: frozenset[str]) -> None:
        self.spec, self.port, self._on_exit = spec, port, on_exit
        self.base_url = f"http://127.0.0.1:{port}"
        self.argv = list(spec.cmd)
        self.ready_at = 0.0
        self.pid: int | None = None
        self.returncode: int | None = None

    def spawn(self) -> Identity:
        self.pid = next(_pids)
        return Identity(self.pid, 0.0)

    async def wait_ready(self, http: UpstreamPool) -> None:
        pass

    async def stop(self) -> None:
        if self.returncode is None:
            self.returncode = -15
            self._on_exit(self)


def manager(config: SwapperConfig) -> Manager:
    """A manager over :class:`ReadyChild` processes (no runtime directory, no TTL task)."""
    return Manager(config, EventBus(), process_factory=ReadyChild)


def openai_error(answer: Answer) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped JSON error answer (asserting that shape)."""
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}
    assert answer.header("content-type") == "application/json"
    return dict(body["error"])
