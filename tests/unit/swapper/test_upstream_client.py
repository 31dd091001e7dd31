"""The data-plane client against raw loopback servers: body framings, pooling, broken answers."""

from __future__ import annotations

import asyncio

import pytest

from swapper.upstream import UpstreamError, UpstreamPool


async def serve_once(answers: list[bytes]) -> tuple[asyncio.Server, int, list[bytes]]:
    """A server that answers each request with the next canned bytes, then closes."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            requests.append(head)
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"keep-alive" not in answer.lower():
                break
        writer.close()

    server, port = await listen(handle)
    return server, port, requests


async def listen(handle) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def body_of(pool: UpstreamPool, port: int) -> bytes:
    resp = await pool.request("POST", "127.0.0.1", port, "/x", [(b"x-a", b"1")], b"{}")
    try:
        return await resp.read()
    finally:
        resp.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nhello",  # ends with the close
])
async def test_every_body_framing_is_read_whole(answer: bytes) -> None:
    server, port, requests = await serve_once([answer])
    async with server:
        assert await body_of(UpstreamPool(), port) == b"hello"
    assert requests[0].startswith(b"POST /x HTTP/1.1\r\n") and b"x-a: 1\r\n" in requests[0]


async def test_a_cut_body_raises() -> None:
    server, port, _ = await serve_once([b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhel"])
    async with server:
        with pytest.raises(UpstreamError):
            await body_of(UpstreamPool(), port)


async def test_keep_alive_connections_are_reused() -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(2):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server, port = await listen(handle)
    pool = UpstreamPool()
    async with server:
        assert await body_of(pool, port) == b"ok"
        assert await body_of(pool, port) == b"ok"
    assert connections == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_request_dropped_on_a_pooled_connection_is_retried_only_if_idempotent(method: str) -> None:
    connections = 0
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        if connections == 1:  # answer, keep alive, then drop the next request unanswered
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nold")
            await writer.drain()
            seen.append(await reader.readuntil(b"\r\n\r\n"))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew")
            await writer.drain()
        writer.close()

    async def fetch(pool: UpstreamPool) -> bytes:
        resp = await pool.request(method, "127.0.0.1", port, "/x", [], b"")
        try:
            return await resp.read()
        finally:
            resp.close()

    server, port = await listen(handle)
    pool = UpstreamPool()
    async with server:
        assert await fetch(pool) == b"old"
        if method == "GET":
            assert await fetch(pool) == b"new"
        else:  # it may already be running upstream: never sent twice
            with pytest.raises(UpstreamError, match="closed"):
                await fetch(pool)
    assert connections == (2 if method == "GET" else 1)
    assert len(seen) == (3 if method == "GET" else 2)


async def test_nobody_listening_is_an_upstream_error() -> None:
    server, port, _ = await serve_once([])
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamError, match="cannot connect"):
        await UpstreamPool().request("GET", "127.0.0.1", port, "/", [], b"")
