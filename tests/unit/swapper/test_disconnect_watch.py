"""A client that hangs up cancels its request's serving task, before or during the answer.

Under swapper's own protocol the lost connection calls the watch back (no task per
request); under plain uvicorn a task reads ``receive``. Both on a real socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from swapper.http_protocol import bounded_protocol
from swapper.reply import DISCONNECT_KEY, DisconnectWatch, Reply
from tests.conftest import eventually, free_port

REQUEST = b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"


@dataclass
class Seen:
    """What the app saw of its one request."""

    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop()
                                       .create_future())
    called_back: bool = False
    new_tasks: int = -1


def watching_app(seen: Seen, answer_first: bool) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        reply = Reply(send)
        before = len(asyncio.all_tasks())
        watch = DisconnectWatch(scope, receive, reply)
        seen.new_tasks = len(asyncio.all_tasks()) - before
        seen.called_back = DISCONNECT_KEY in scope
        try:
            if answer_first:
                await reply.send({"type": "http.response.start", "status": 200, "headers": []})
                await reply.send({"type": "http.response.body", "body": b"ok"})
            seen.waiting.set()
            await asyncio.Event().wait()  # an upstream that never answers
        except asyncio.CancelledError:
            seen.ended.set_result("disconnected" if watch.disconnected else "cancelled")
            raise
        finally:
            watch.close()
    return app


@pytest.fixture(params=["swapper", "uvicorn"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Seen, int]]:
    seen = Seen()
    port = free_port()
    http = bounded_protocol() if request.param == "swapper" else "httptools"
    server = uvicorn.Server(uvicorn.Config(
        watching_app(seen, answer_first=False), host="127.0.0.1", port=port, lifespan="off",
        log_level="warning", http=http))
    task = asyncio.ensure_future(server.serve())
    await eventually(lambda: server.started, 10, "the server to listen")
    yield request.param, seen, port
    server.should_exit = True
    await task


async def test_a_client_that_hangs_up_before_the_answer_cancels_the_request(
        served: tuple[str, Seen, int]) -> None:
    protocol, seen, port = served
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await asyncio.wait_for(seen.waiting.wait(), 5)
    writer.close()
    assert await asyncio.wait_for(seen.ended, 1) == "disconnected"
    if protocol == "swapper":  # called back by the protocol: no task waits on receive
        assert seen.called_back and seen.new_tasks == 0
    else:
        assert not seen.called_back and seen.new_tasks == 1


async def test_a_hang_up_after_a_complete_answer_cancels_nothing() -> None:
    seen = Seen()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        watching_app(seen, answer_first=True), host="127.0.0.1", port=port, lifespan="off",
        log_level="warning", http=bounded_protocol(), timeout_graceful_shutdown=0.2))
    task = asyncio.ensure_future(server.serve())
    await eventually(lambda: server.started, 10, "the server to listen")
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await asyncio.wait_for(seen.waiting.wait(), 5)
    writer.close()
    await eventually(lambda: not server.server_state.connections, 10, "the server to see the client go")
    assert not seen.ended.done()
    server.should_exit = True  # shutdown cancels the still-running app: not the client's doing
    await task
    assert await asyncio.wait_for(seen.ended, 5) == "cancelled"
