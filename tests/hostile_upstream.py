"""A scriptable misbehaving upstream (test double) for fault and security tests.

It speaks raw bytes over asyncio, so it can break HTTP in ways a real server
library never would. Each request is answered by one named *behaviour* from
:data:`BEHAVIOURS`, chosen by (first match):

1. the request header ``x-hostile: <name>`` (the swapper forwards it);
2. the path ``/hostile/<name>[/anything]``;
3. the default (``--default``, else ``chat``).

Behaviours: ``chat`` (like llama-server: keep-alive JSON, or SSE + [DONE] +
close when the body says ``"stream": true``; both echo what the upstream saw as
``seen``), ``garbage``, ``continue`` / ``early-hints`` / ``many-interim`` (1xx
first), ``switching`` (101), ``status-999`` / ``status-099``, ``huge-headers``
/ ``many-headers`` (> 64 KB), ``cut-json`` / ``cut-length`` / ``cut-sse`` /
``cut-sse-gzip`` (the body breaks off), ``stall-sse`` (one event, then silence),
``big-sse`` (8 MB), ``gzip-sse`` / ``br-sse`` (an SSE chat answer sent with
``Content-Encoding: gzip``, really compressed, or ``br``, whatever was asked for),
``html-500`` (an HTML error page, as a misconfigured proxy sends), ``hang`` (never answers),
``slow-headers`` (a header line every 0.2 s), ``connection-named`` (a ``Connection: X-Secret`` answer),
``extra-response`` / ``late-extra`` (an unsolicited second answer, at once or
50 ms later), ``drop-after-request`` (reads the request, closes). Add one by
adding a function ``Request -> list[Step]`` to the table.

``GET .../health`` always answers 200 (unrecorded), so it can run as a model's
``cmd``. Every other request (method, target, headers, body: exactly as they
arrived) is kept in ``HostileUpstream.requests`` and, with ``--record FILE``,
appended to FILE as one JSON line (:func:`read_record`).

In process (pytest-asyncio)::

    async with HostileUpstream() as up:        # 127.0.0.1, a free port
        ... up.port ... up.requests ... up.connections ...

As a command (a model ``cmd``: :func:`hostile_cmd` gives the YAML text, and
:func:`start_swapper` runs ``python -m swapper`` on a config)::

    python tests/hostile_upstream.py --port 8081 [--host ::1] [--default NAME]
        [--record FILE] [--log-flood BYTES] [--setsid-grandchild PIDFILE]

``--log-flood BYTES`` prints one log line of that many bytes at start (then the
usual "listening" line); ``--setsid-grandchild PIDFILE`` forks a grandchild
that calls ``setsid()``, writes its pid to PIDFILE and sleeps (a forking wrapper
that escapes its process group). Unknown flags are ignored, so it can stand in
for llama-server.

Client side, :func:`exchange` sends raw request bytes (:func:`http_request`
builds them) and tells a cut body from a complete one.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
HANG = math.inf  # a step that never finishes: the upstream goes silent, connection open
CLOSE = None  # a step that closes the connection


@dataclass
class Request:
    """One request exactly as it arrived."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name), "")

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "target": self.target,
                "headers": [list(h) for h in self.headers], "body": self.body.decode("latin-1")}


Step = bytes | float | None
"""bytes: write them; float: pause that many seconds; HANG: go silent; CLOSE: close."""


def head(status: str = "200 OK", *headers: str) -> bytes:
    return ("HTTP/1.1 " + status + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


def _json(data: Any, *headers: str) -> bytes:
    body = json.dumps(data).encode()
    return head("200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}",
                *headers) + body


def _event(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def chat_answer(req: Request) -> dict[str, Any]:
    """A chat completion that echoes what this upstream saw (so tests can match answers)."""
    return {"id": "chatcmpl-hostile", "object": "chat.completion", "model": "hostile",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi"}}],
            "seen": req.as_dict()}


def _sse_head(*extra: str) -> bytes:
    return head("200 OK", "Content-Type: text/event-stream", "Transfer-Encoding: chunked", *extra)


def _delta(text: str) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}


def chat(req: Request) -> list[Step]:
    """Like llama-server: JSON (keep-alive), or SSE ending with [DONE] and a close."""
    try:
        stream = bool(json.loads(req.body or b"{}").get("stream"))
    except (ValueError, AttributeError):
        stream = False
    if not stream:
        return [_json(chat_answer(req))]
    events = _event(_delta("hi")) + _event({"seen": req.as_dict()}) + b"data: [DONE]\n\n"
    return [_sse_head("Connection: close") + _chunk(events) + b"0\r\n\r\n", CLOSE]


_DRIP: list[Step] = [0.2, b"X-Drip: 1\r\n"]  # one header line every 0.2 s
SMUGGLED = head("200 OK", "Content-Type: application/json", "Content-Length: 11") + b'"smuggled"\n'
"""An answer nobody asked for (sent after a real one)."""


def _cut_sse(*extra: str) -> list[Step]:
    return [_sse_head(*extra) + _chunk(_event(_delta("partial"))), CLOSE]


def _encoded_sse(coding: str) -> list[Step]:
    """A complete SSE chat answer whose body is declared (gzip: and is) ``coding``-encoded."""
    events = _event(_delta("hi")) + _event(_delta(" there")) + b"data: [DONE]\n\n"
    body = gzip.compress(events) if coding == "gzip" else events
    return [_sse_head(f"Content-Encoding: {coding}", "Connection: close")
            + _chunk(body[:20]) + _chunk(body[20:]) + b"0\r\n\r\n", CLOSE]


HTML_PAGE = b"<html><body><h1>500 Internal Server Error</h1>" + b"<p>nginx</p>" * 500 + \
    b"</body></html>"


BEHAVIOURS: dict[str, Callable[[Request], list[Step]]] = {
    "chat": chat,
    "garbage": lambda req: [b"\x00\xffNOT HTTP AT ALL\r\n\r\n", CLOSE],
    # interim answers go out on their own, as a server that then works on the request would
    "continue": lambda req: [head("100 Continue"), 0.05, *chat(req)],
    "early-hints": lambda req: [head("103 Early Hints", "Link: </x>; rel=preload"), 0.05, *chat(req)],
    "many-interim": lambda req: [head("102 Processing"), 0.05, head("102 Processing"), 0.05,
                                 *chat(req)],
    "switching": lambda req: [head("101 Switching Protocols", "Upgrade: x", "Connection: upgrade"),
                              HANG],
    "status-999": lambda req: [head("999 Weird", "Content-Length: 2") + b"ok"],
    "status-099": lambda req: [b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok"],
    "huge-headers": lambda req: [head("200 OK", "X-Big: " + "a" * 100_000, "Content-Length: 2")
                                 + b"ok"],
    "many-headers": lambda req: [head("200 OK", *(f"X-H{i}: {'b' * 50}" for i in range(2000)),
                                      "Content-Length: 2") + b"ok"],
    "cut-json": lambda req: [head("200 OK", "Content-Type: application/json",
                                  "Transfer-Encoding: chunked") + _chunk(b'{"choices": [{"mess'),
                             CLOSE],
    "cut-length": lambda req: [head("200 OK", "Content-Type: text/plain", "Content-Length: 100")
                               + b"only ten b", CLOSE],
    "cut-sse": lambda req: _cut_sse(),
    "cut-sse-gzip": lambda req: _cut_sse("Content-Encoding: gzip"),
    "big-sse": lambda req: [_sse_head(), *(_chunk(_event(_delta("x" * 65000))) for _ in range(130)),
                            _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"],
    "gzip-sse": lambda req: _encoded_sse("gzip"),
    "br-sse": lambda req: _encoded_sse("br"),
    "html-500": lambda req: [head("500 Internal Server Error", "Content-Type: text/html",
                                  f"Content-Length: {len(HTML_PAGE)}") + HTML_PAGE],
    "stall-sse": lambda req: [_sse_head() + _chunk(_event(_delta("first"))), HANG],
    "hang": lambda req: [HANG],
    "slow-headers": lambda req: [b"HTTP/1.1 200 OK\r\n", *_DRIP * 1000, HANG],
    "connection-named": lambda req: [_json(chat_answer(req), "Connection: keep-alive, X-Secret",
                                           "X-Secret: hop", "Keep-Alive: timeout=5")],
    "extra-response": lambda req: [_json(chat_answer(req)) + SMUGGLED],
    "late-extra": lambda req: [_json(chat_answer(req)), 0.05, SMUGGLED],
    "drop-after-request": lambda req: [CLOSE],
}


class HostileUpstream:
    """The server; ``async with`` starts it on ``host`` and a free port (or ``port``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, default: str = "chat",
                 record: Path | None = None) -> None:
        self.host, self.port, self.default, self.record = host, port, default, record
        self.requests: list[Request] = []
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def base_url(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> HostileUpstream:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    def behaviour(self, req: Request) -> str:
        name = req.header("x-hostile")
        if not name and req.target.startswith("/hostile/"):
            name = req.target.split("/")[2].split("?")[0]
        return name or self.default

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while (req := await _read_request(reader)) is not None:
                if req.method == "GET" and req.target.endswith("/health"):
                    writer.write(_json({"status": "ok"}))
                    continue
                self.requests.append(req)
                if self.record is not None:
                    with self.record.open("a") as out:
                        out.write(json.dumps(req.as_dict()) + "\n")
                if not await _play(BEHAVIOURS[self.behaviour(req)](req), writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.CancelledError):
            pass  # the client went, or the server is closing
        finally:
            self._writers.discard(writer)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = re.split(r"\r?\n", raw.decode("latin-1"))  # a bare LF ends a line, as in lenient servers
    method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
    length = int(next((v for k, v in headers if k.lower() == "content-length"), "0") or 0)
    return Request(method, target, headers, await reader.readexactly(length))


async def _play(steps: list[Step], writer: asyncio.StreamWriter) -> bool:
    """Carry out the steps; False once the connection is closed."""
    for step in steps:
        if step is CLOSE:
            await writer.drain()
            return False
        if step == HANG:
            await writer.drain()
            await asyncio.Event().wait()
        elif isinstance(step, float):
            await writer.drain()
            await asyncio.sleep(step)
        else:
            writer.write(step)
    await writer.drain()
    return True


@dataclass
class Reply:
    """What a client got back: ``complete`` is False when the body was cut (EOF mid-body)."""

    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, request: bytes, timeout: float = 10.0, host: str = "127.0.0.1") -> Reply:
    """Send raw request bytes on a new connection and read one response (blocking).

    Raw bytes so a test can send what http.client refuses to (control characters,
    odd encodings). The response is parsed with httptools; ``status`` is 0 when
    nothing parsable came back.
    """
    import socket

    import httptools

    class Sink:
        def __init__(self) -> None:
            self.headers: dict[str, str] = {}
            self.body = bytearray()
            self.done = self.interim = False

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

        def on_headers_complete(self) -> None:
            self.interim = 100 <= parser.get_status_code() < 200

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            if self.interim:  # e.g. the server's own 100 Continue: the answer follows
                self.headers.clear()
            self.done = not self.interim

    sink = Sink()
    parser = httptools.HttpResponseParser(sink)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        while not sink.done:
            data = sock.recv(65536)
            if not data:
                break
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                break
        if not sink.done and sink.headers and "content-length" not in sink.headers \
                and "chunked" not in sink.headers.get("transfer-encoding", ""):
            sink.done = True  # close-delimited: the close is the end
    status = parser.get_status_code() if sink.headers or sink.done else 0
    return Reply(status, sink.headers, bytes(sink.body), sink.done)


def http_request(method: str, target: str, headers: dict[str, str] | None = None,
                 body: bytes = b"") -> bytes:
    """Raw HTTP/1.1 request bytes (``target`` written as given, unchecked)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def start_swapper(config_yaml: str, directory: Path) -> tuple[Any, int]:
    """Run ``python -m swapper`` on a config text (files in ``directory``): (server, port).

    Stop it with ``tests.conftest.stop_server``; for a module-scoped fixture.
    """
    from tests.conftest import free_port, start_server

    config = directory / "config.yaml"
    config.write_text(config_yaml)
    port = free_port()
    server = start_server([sys.executable, "-m", "swapper", "-c", str(config), "--listen",
                           f"127.0.0.1:{port}", "--runtime-dir", str(directory / "run")], port,
                          directory / "swapper.log")
    return server, port


def hostile_cmd(*flags: str) -> str:
    """A YAML ``cmd`` running this upstream on ``${PORT}``."""
    return " ".join([sys.executable, str(HERE), "--port", "${PORT}", *flags])


def read_record(path: Path) -> list[dict[str, Any]]:
    """The requests a ``--record`` file holds (an empty list if none arrived yet)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _setsid_grandchild(pidfile: Path) -> None:
    if os.fork() == 0:
        os.setsid()
        tmp = pidfile.with_name(pidfile.name + ".tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, pidfile)
        while True:
            time.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--default", default="chat", choices=sorted(BEHAVIOURS))
    parser.add_argument("--record", type=Path)
    parser.add_argument("--log-flood", type=int, default=0)
    parser.add_argument("--setsid-grandchild", type=Path)
    args, _ = parser.parse_known_args()
    if args.setsid_grandchild is not None:
        _setsid_grandchild(args.setsid_grandchild)
    if args.log_flood:
        sys.stdout.write("x" * args.log_flood + "\n")

    async def serve() -> None:
        async with HostileUpstream(args.host, args.port, args.default, args.record):
            print(f"main: server is listening on http://{args.host}:{args.port}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
