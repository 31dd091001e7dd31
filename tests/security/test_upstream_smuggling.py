"""Request smuggling through ``/upstream/{model}/{path}`` and cross-talk on pooled connections.

Against a real ``python -m swapper`` whose models run the hostile upstream,
which records every request exactly as it arrived: no path, however encoded,
makes the upstream see a header or a request the client did not send, and
every answer reaches the client that asked for it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from swapper.errors import ApiError
from swapper.upstream import UpstreamPool
from swapper.upstream_path import upstream_target
from tests.conftest import stop_server
from tests.hostile_upstream import (
    HostileUpstream,
    exchange,
    hostile_cmd,
    http_request,
    read_record,
    start_swapper,
)

MODELS = {"h": "h", "p": "p", "org/m": "org/m", "alias": "h"}

# raw path -> the target the upstream must see, or the status that refuses it
TARGETS: list[tuple[bytes, str | int]] = [
    (b"/upstream/h/props", "/props"),
    (b"/upstream/h", "/"),
    (b"/upstream/alias/slots", "/slots"),
    (b"/upstream/org/m/v1/models", "/v1/models"),
    (b"/upstream/org%2Fm/v1/models", "/v1/models"),
    (b"/upstream/h/a%20b/%C3%A9", "/a%20b/%C3%A9"),  # stays encoded, byte for byte
    (b"/upstream/h/a/./b/../c", "/a/c"),
    (b"/upstream/h/../../../etc/passwd", "/etc/passwd"),
    (b"/upstream/h/%2e%2e/%2E%2e/x", "/x"),
    (b"/upstream/h/.%2e/.%2E/x", "/x"),
    (b"/upstream/h/a%252e%252e/b", "/a%252e%252e/b"),  # double-encoded stays literal
    (b"/upstream/h/..%2fetc", 400),
    (b"/upstream/h/..%5Cetc", 400),
    (b"/upstream/h/a%0D%0AX-Injected:%201", 400),
    (b"/upstream/h/a%0aX-Injected:1", 400),
    (b"/upstream/h/a%0D%0A%0D%0AGET%20/smuggled%20HTTP/1.1", 400),
    (b"/upstream/h/a%00", 400),
    (b"/upstream/h/a%7F", 400),
    (b"/upstream/h/a%09", 400),
    (b"/upstream/h%0d%0aX:1/x", 400),
    (b"/upstream/nope/x", 404),
    (b"/upstream/%2e%2e/h/x", 404),
]


@pytest.mark.parametrize(("raw", "expected"), TARGETS)
def test_the_target_is_built_from_the_raw_path(raw: bytes, expected: str | int) -> None:
    if isinstance(expected, int):
        with pytest.raises(ApiError) as caught:
            upstream_target(raw, b"", MODELS.get)
        assert caught.value.status == expected
    else:
        assert upstream_target(raw, b"", MODELS.get)[1] == expected


@pytest.mark.parametrize("query", [b"a=%0d%0aX-Injected:%201", b"a=%00", b"a=\x01", b"a=%7f"])
def test_control_characters_in_the_query_are_refused(query: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        upstream_target(b"/upstream/h/x", query, MODELS.get)
    assert caught.value.status == 400


@dataclass
class Stack:
    port: int
    record: Path

    def seen(self) -> list[dict]:
        return read_record(self.record)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("smuggling")
    record = tmp / "seen.jsonl"
    cmd = hostile_cmd("--record", str(record))
    server, port = start_swapper(
        f"models:\n  h:\n    cmd: {cmd}\n    concurrencyLimit: 64\n"
        f"  p:\n    cmd: {cmd}\n    proxy: http://127.0.0.1:${{PORT}}/ns\n"
        "matrix:\n  sets:\n    both: \"h & p\"\n", tmp)
    yield Stack(port, record)
    stop_server(server)


HOSTILE_PATHS = [
    "/upstream/h/a%0D%0AX-Injected:%201",
    "/upstream/h/a%0D%0AX-Injected:%201%0D%0A%0D%0AGET%20/smuggled%20HTTP/1.1%0D%0AHost:%20x",
    "/upstream/h/x%20HTTP/1.1%0D%0AX-Injected:%201%0D%0A",
    "/upstream/h/a%0aX-Injected:1",
    "/upstream/h/a%0dX-Injected:1",
    "/upstream/h/a%00X",
    "/upstream/h/a%u000aX",
    "/upstream/h/a?q=%0D%0AX-Injected:%201",
    "/upstream/h/a?q=1%0d%0a%0d%0aGET%20/smuggled",
    "/upstream/h/%0D%0AX-Injected:%201/x",
    "/upstream/h%0D%0AX-Injected:%201/x",
    "/upstream/p/../../../outside",
    "/upstream/p/%2e%2e/%2e%2e/outside",
    "/upstream/p/..%2f..%2foutside",
    "/upstream/p/..%5c..%5coutside",
    "/upstream/h/a\tX-Injected:1",
    "/upstream/h/a\x0bX",
    "/v1/chat/completions?x=%0D%0AX-Injected:%201",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_no_path_makes_the_upstream_see_what_the_client_did_not_send(stack: Stack,
                                                                     path: str) -> None:
    before = len(stack.seen())
    body = json.dumps({"model": "h", "messages": []}).encode()
    reply = exchange(stack.port, http_request("POST", path, {"x-tag": "only",
                                                             "content-type": "application/json"},
                                              body))
    seen = stack.seen()[before:]
    assert len(seen) <= 1, seen  # never a second, smuggled request
    for request in seen:
        names = {name.lower() for name, _ in request["headers"]}
        assert names <= {"host", "content-length", "x-tag", "content-type", "accept-encoding"}, request
        assert all(v == "identity" for k, v in request["headers"]
                   if k.lower() == "accept-encoding"), request  # ours: bytes pass through
        target = request["target"]
        assert "smuggled" not in target and not re.search(r"[\x00-\x20\x7f]", target), request
        assert ".." not in re.split(r"[/\\]", unquote(target)), request  # never climbs
        if path.startswith("/upstream/p/"):
            assert target.startswith("/ns/"), request  # ...out of its namespace
    assert reply.status in (200, 400, 404) or reply.status == 0, reply


def test_100_interleaved_requests_from_3_clients_each_get_their_own_answer(stack: Stack) -> None:
    """Mixed with upstream answers that carry an unsolicited extra response."""
    behaviours = ["chat", "extra-response", "chat", "connection-named"]
    wrong: list[str] = []

    def client(name: str) -> None:
        try:
            requests(name)
        except Exception as exc:  # an answer that is not this client's JSON
            wrong.append(f"{name}: {exc!r}")

    def requests(name: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
        for n in range(34):
            tag = f"{name}-{n}"
            stream = n % 5 == 4
            path = "/upstream/h/v1/chat/completions" if n % 2 else "/v1/chat/completions"
            conn.request("POST", path, json.dumps({"model": "h", "stream": stream}),
                         {"x-tag": tag, "x-hostile": behaviours[n % len(behaviours)],
                          "content-type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.getheader("content-type", "").startswith("text/event-stream"):
                seen = json.loads(body.split(b"\n\n")[1].removeprefix(b"data: "))["seen"]
                conn.close()  # the stream closed the upstream connection; start afresh here too
                conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
            else:
                seen = json.loads(body)["seen"]
            tags = [v for k, v in seen["headers"] if k.lower() == "x-tag"]
            if resp.status != 200 or tags != [tag]:
                wrong.append(f"{tag}: {resp.status} {tags}")
        conn.close()

    threads = [threading.Thread(target=client, args=(f"c{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not wrong
    assert not any(t.is_alive() for t in threads)


async def test_a_pooled_connection_that_gets_a_byte_while_idle_is_never_reused() -> None:
    async with HostileUpstream() as up:
        pool = UpstreamPool()
        resp = await pool.request("POST", "127.0.0.1", up.port, "/hostile/late-extra", [], b"{}")
        assert b"late-extra" in await resp.read()
        resp.close()  # back to the pool; 50 ms later the upstream sends an answer nobody asked for
        idle = pool._idle[("127.0.0.1", up.port)][0]
        for _ in range(500):
            if idle.closed:
                break
            await asyncio.sleep(0.01)  # poll: the stray answer arrives on its own
        assert idle.closed, "the connection that got a stray answer is still pooled"
        resp = await pool.request("POST", "127.0.0.1", up.port, "/hostile/chat", [], b"{}")
        answer = json.loads(await resp.read())
        resp.close()
        assert answer["seen"]["target"] == "/hostile/chat"
        assert up.connections == 2
