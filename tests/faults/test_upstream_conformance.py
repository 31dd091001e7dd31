"""HTTP/1.1 conformance of the upstream client, one row per item of issue 8 class 3.

A real ``python -m swapper`` serves two models run by the hostile upstream (one
on IPv4, one on ``[::1]``); each row picks a misbehaviour with the
``x-hostile`` header, sends one raw request and checks what the client got and
what the upstream saw (its ``--record`` file).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import stop_server
from tests.hostile_upstream import Reply, exchange, hostile_cmd, http_request, read_record, start_swapper

CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "h", "messages": [{"role": "user", "content": "hi"}]}).encode()


@dataclass
class Stack:
    port: int
    record: Path
    record6: Path

    def chat(self, behaviour: str, model: str = "h", **headers: str) -> Reply:
        body = BODY.replace(b'"h"', f'"{model}"'.encode())
        return exchange(self.port, http_request("POST", CHAT, {"x-hostile": behaviour,
                                                               "content-type": "application/json",
                                                               **headers}, body))

    def seen(self) -> list[dict]:
        return read_record(self.record)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("conformance")
    record, record6 = tmp / "seen.jsonl", tmp / "seen6.jsonl"
    server, port = start_swapper(
        "models:\n"
        f"  h:\n    cmd: {hostile_cmd('--record', str(record))}\n"
        f"  v6:\n    cmd: {hostile_cmd('--host', '::1', '--record', str(record6))}\n"
        "    proxy: http://[::1]:${PORT}\n"
        "matrix:\n  sets:\n    both: \"h & v6\"\n", tmp)
    yield Stack(port, record, record6)
    stop_server(server)


def _json_error(reply: Reply, status: int) -> None:
    assert reply.status == status, reply
    assert reply.complete and "error" in reply.json(), reply


def interim_100_is_skipped(stack: Stack) -> None:
    reply = stack.chat("continue")
    assert reply.status == 200 and reply.json()["choices"][0]["message"]["content"] == "hi"


def interim_103_and_102_are_skipped(stack: Stack) -> None:
    for behaviour in ("early-hints", "many-interim"):
        reply = stack.chat(behaviour)
        assert reply.status == 200 and reply.json()["object"] == "chat.completion", behaviour


def expect_is_not_forwarded(stack: Stack) -> None:
    reply = stack.chat("chat", expect="100-continue")
    assert reply.status == 200
    seen = {name.lower() for name, _ in reply.json()["seen"]["headers"]}
    assert "expect" not in seen and "x-hostile" in seen


def connection_named_headers_are_not_forwarded(stack: Stack) -> None:
    reply = stack.chat("connection-named", connection="x-private, keep-alive",
                       **{"x-private": "secret", "keep-alive": "timeout=9", "x-public": "1"})
    seen = {name.lower() for name, _ in reply.json()["seen"]["headers"]}
    assert "x-public" in seen and not seen & {"x-private", "keep-alive", "connection"}
    # ...and the upstream's own Connection-named header does not reach the client
    assert "x-secret" not in reply.headers and "keep-alive" not in reply.headers


def a_cut_body_is_visibly_cut_on_every_framing(stack: Stack) -> None:
    for behaviour in ("cut-json", "cut-length"):  # aborted: never a clean end
        reply = stack.chat(behaviour)
        assert reply.status == 200 and not reply.complete, behaviour
    reply = stack.chat("cut-sse")  # a stream ends with an error event
    assert reply.status == 200 and reply.complete
    assert b'"error"' in reply.body.rsplit(b"\n\n", 2)[-2]


def unknown_status_codes_are_a_json_502(stack: Stack) -> None:
    for behaviour in ("status-999", "status-099", "switching", "garbage"):
        _json_error(stack.chat(behaviour), 502)


def response_headers_are_bounded(stack: Stack) -> None:
    for behaviour in ("huge-headers", "many-headers"):
        _json_error(stack.chat(behaviour), 502)


def a_post_dropped_on_a_pooled_connection_is_not_sent_again(stack: Stack) -> None:
    assert stack.chat("chat").status == 200  # leaves a keep-alive connection in the pool
    before = len(stack.seen())
    _json_error(stack.chat("drop-after-request"), 502)
    assert len(stack.seen()) - before == 1  # today: retried, so it ran twice


def ipv6_upstream_hosts_work(stack: Stack) -> None:
    reply = stack.chat("chat", model="v6")
    assert reply.status == 200, reply
    host = dict((k.lower(), v) for k, v in reply.json()["seen"]["headers"])["host"]
    assert host.startswith("[::1]:")


def no_error_event_on_a_compressed_stream(stack: Stack) -> None:
    reply = stack.chat("cut-sse-gzip")
    assert reply.status == 200 and not reply.complete
    assert b'"error"' not in reply.body


ROWS: list[Callable[[Stack], None]] = [
    interim_100_is_skipped,
    interim_103_and_102_are_skipped,
    expect_is_not_forwarded,
    connection_named_headers_are_not_forwarded,
    a_cut_body_is_visibly_cut_on_every_framing,
    unknown_status_codes_are_a_json_502,
    response_headers_are_bounded,
    a_post_dropped_on_a_pooled_connection_is_not_sent_again,
    ipv6_upstream_hosts_work,
    no_error_event_on_a_compressed_stream,
]


@pytest.mark.parametrize("row", ROWS, ids=[row.__name__ for row in ROWS])
def test_upstream_conformance(stack: Stack, row: Callable[[Stack], None]) -> None:
    row(stack)
