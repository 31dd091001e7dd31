"""A client that stops sending its request body is answered 408 and closed; a slow but
steady body is read to the end; neither leaves an "Exception in ASGI application" behind.

The real app and the real protocol class on a real socket, with a short body timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
import uvicorn

from swapper.http_app import SwapperApp
from swapper.http_protocol import bounded_protocol
from swapper.manager import Manager
from swapper.yaml_config import parse_yaml_config
from tests.conftest import eventually, free_port

BODY_TIMEOUT = 0.5
HEAD = (b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")
BODY = b'{"model": "nope", "input": "hello there"}'


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = SwapperApp(Manager(parse_yaml_config("models:\n  a:\n    cmd: x ${PORT}\n")))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning",
        http=bounded_protocol(body_timeout=BODY_TIMEOUT)))
    task = asyncio.ensure_future(server.serve())
    await eventually(lambda: server.started, 10, "the server to listen")
    yield port
    server.should_exit = True
    await task


async def test_a_stalled_body_is_408_and_closed(port: int,
                                                caplog: pytest.LogCaptureFixture) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD % len(BODY) + BODY[:10])
    started = time.monotonic()
    reply = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    waited = time.monotonic() - started
    writer.close()
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert b"request body stalled" in reply
    assert BODY_TIMEOUT - 0.1 <= waited < BODY_TIMEOUT + 2
    await asyncio.sleep(0.1)  # the app's side of the request ends
    assert not [r for r in caplog.records
                if r.levelno >= logging.ERROR and "ASGI" in r.getMessage()]


async def test_a_slow_but_steady_body_is_read_to_the_end(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD % len(BODY))
    for i in range(0, len(BODY), 8):  # 6 pieces 0.2 s apart: 1 s in all, past the timeout
        writer.write(BODY[i:i + 8])
        await writer.drain()
        await asyncio.sleep(0.2)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 404 "), head  # the unknown model, not a timeout
