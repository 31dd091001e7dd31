"""Front-door bounds of ``python -m swapper`` against hostile raw-socket clients."""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapper.http_app import DEFAULT_MAX_BODY
from swapper.http_protocol import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_HEADER_BYTES
from swapper.reply import Reply, guarded
from swapper.server import KEEP_ALIVE_TIMEOUT
from tests.conftest import Server, stop_server
from tests.front_door_support import (
    error_of,
    one_model_yaml,
    port_of,
    raw_request,
    read_reply,
    start_swapper,
    status_of,
)

CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started = start_swapper(tmp_path, one_model_yaml(extra="apiKeys: [sekrit]\n"))
    yield started
    stop_server(started)


def authed(head: bytes) -> bytes:
    return head + b"\r\nAuthorization: Bearer sekrit"


def test_headers_past_the_limit_are_431_and_small_ones_pass(server: Server) -> None:
    ok = raw_request(server, authed(b"GET /running HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
                                    + b"a" * (DEFAULT_MAX_HEADER_BYTES // 2)))
    assert status_of(ok) == 200
    big = raw_request(server, authed(b"GET /running HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
                                     + b"a" * (DEFAULT_MAX_HEADER_BYTES + 1)))
    assert status_of(big) == 431 and error_of(big)["type"] == "invalid_request_error"
    many = b"".join(b"\r\nX-H%d: %s" % (i, b"b" * 100) for i in range(1000))  # 100 KB in many
    assert status_of(raw_request(server, authed(b"GET /running HTTP/1.1\r\nHost: x" + many))) == 431


def test_a_16_mb_header_is_refused_before_it_is_all_sent(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as sock:
        sock.sendall(authed(CHAT) + b"\r\nX-Pad: ")
        sent = 0
        with pytest.raises(OSError):  # reset or broken pipe once the server has refused and closed
            while sent < 16 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        assert sent < 4 * 1024 * 1024


def test_slow_header_clients_are_closed_after_the_header_timeout(server: Server) -> None:
    """200 clients sending headers a byte at a time are all closed; others are still served."""
    port = port_of(server)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        sock.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        selector.register(sock, selectors.EVENT_READ)
    started = time.monotonic()
    assert status_of(raw_request(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1")) == 200
    open_socks = set(socks)
    replies: dict[socket.socket, bytes] = {}
    while open_socks and time.monotonic() - started < DEFAULT_HEADER_TIMEOUT + 5:
        for sock in list(open_socks):  # one more header byte each, about every 0.2 s
            with contextlib.suppress(OSError):
                sock.send(b"x")
        for key, _ in selector.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            replies[sock] = replies.get(sock, b"") + data
            if not data:
                open_socks.discard(sock)
                selector.unregister(sock)
    elapsed = time.monotonic() - started
    for sock in socks:
        sock.close()
    assert not open_socks, f"{len(open_socks)} of 200 slow connections still open after {elapsed:.1f} s"
    assert elapsed >= DEFAULT_HEADER_TIMEOUT - 0.5
    assert all(status_of(reply) == 408 for reply in replies.values())


def test_pipelined_requests_still_get_their_answers_in_order(server: Server) -> None:
    requests = [authed(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1" % path) + b"\r\n\r\n"
                for path in (b"/health", b"/running")]
    requests.append(authed(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close")
                    + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        stream = b""
        while chunk := sock.recv(65536):
            stream += chunk
    replies = [b"HTTP/1.1 " + r for r in stream.split(b"HTTP/1.1 ")[1:]]
    assert [status_of(r) for r in replies] == [200, 200, 200]
    running = f'{{"running": [], "pid": {server.popen.pid}}}'.encode()
    assert replies[1].endswith(running) and replies[2].endswith(b"OK")


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=KEEP_ALIVE_TIMEOUT + 5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_reply(sock).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert KEEP_ALIVE_TIMEOUT - 0.5 < time.monotonic() - started < KEEP_ALIVE_TIMEOUT + 2


def test_body_past_the_limit_by_content_length_is_413_before_any_body(server: Server) -> None:
    started = time.monotonic()
    reply = raw_request(server, authed(CHAT + b"\r\nContent-Length: %d" % (DEFAULT_MAX_BODY + 1)),
                        timeout=5)
    assert status_of(reply) == 413 and time.monotonic() - started < 2
    assert b"connection: close" in reply.lower()


def test_chunked_body_past_the_limit_is_413_while_streaming(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=20) as sock:
        sock.sendall(authed(CHAT + b"\r\nTransfer-Encoding: chunked") + b"\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (1 << 20, b"a" * (1 << 20))
        sent = 0
        try:
            while sent <= DEFAULT_MAX_BODY + (1 << 20):
                sock.sendall(piece)
                sent += 1 << 20
        except OSError:
            pass
        assert status_of(read_reply(sock)) == 413


def test_deeply_nested_json_is_400(server: Server) -> None:
    body = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    reply = raw_request(server, authed(CHAT + b"\r\nContent-Type: application/json"
                                       + b"\r\nContent-Length: %d" % len(body)), body)
    assert status_of(reply) == 400 and "nested" in error_of(reply)["message"]


async def test_a_recursion_error_while_handling_is_a_400_not_a_500() -> None:
    """JSON shallow enough for the parser can still be too deep to walk or re-encode."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def too_deep(_: object) -> None:
        raise RecursionError

    await guarded(Reply(send), too_deep)
    assert sent[0]["status"] == 400 and b"nested too deeply" in sent[1]["body"]


def test_non_utf8_multipart_model_is_400(server: Server) -> None:
    body = (b'--XX\r\nContent-Disposition: form-data; name="model"\r\n\r\n\xff\xfe\r\n'
            b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n'
            b"--XX--\r\n")
    head = (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: %d" % len(body))
    reply = raw_request(server, authed(head), body)
    assert status_of(reply) == 400 and "UTF-8" in error_of(reply)["message"]


def test_non_ascii_authorization_is_401(server: Server) -> None:
    reply = raw_request(server, b"GET /running HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Authorization: Bearer s\xe9krit\xff")
    assert status_of(reply) == 401 and error_of(reply)["type"] == "authentication_error"
    reply = raw_request(server, b"GET /running HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: \xe9")
    assert status_of(reply) == 401


@pytest.mark.parametrize("path", [b"/health", b"/v1/models", b"/running", b"/events"])
def test_head_works_on_get_routes(server: Server, path: bytes) -> None:
    get = raw_request(server, authed(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1"))
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=5) as sock:
        sock.sendall(authed(b"HEAD " + path + b" HTTP/1.1\r\nHost: 127.0.0.1") + b"\r\n\r\n")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(1)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        # the connection is still usable: the next reply starts right after HEAD's headers
        sock.sendall(authed(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1") + b"\r\n\r\n")
        assert read_reply(sock).startswith(b"HTTP/1.1 200")
    assert status_of(head) == 200 and length == len(get.partition(b"\r\n\r\n")[2])


def test_options_without_cors_is_405(server: Server) -> None:
    reply = raw_request(server, b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Origin: http://app.example\r\nAccess-Control-Request-Method: POST")
    assert status_of(reply) == 405 and b"access-control-allow-origin" not in reply.lower()


def test_options_with_cors_is_204_for_the_configured_origin(tmp_path: Path) -> None:
    server = start_swapper(tmp_path, one_model_yaml(), "--cors-origins", "http://app.example")
    try:
        preflight = (b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Access-Control-Request-Method: POST\r\n"
                     b"Access-Control-Request-Headers: content-type\r\nOrigin: ")
        reply = raw_request(server, preflight + b"http://app.example").lower()
        assert status_of(reply) == 204
        assert b"access-control-allow-origin: http://app.example" in reply
        assert b"access-control-allow-methods:" in reply
        assert status_of(raw_request(server, preflight + b"http://evil.example")) == 403
        reply = raw_request(server, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    b"Origin: http://app.example").lower()
        assert status_of(reply) == 200
        assert b"access-control-allow-origin: http://app.example" in reply
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["data"][0]["id"] == "m"
    finally:
        stop_server(server)
