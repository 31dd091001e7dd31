"""A response whose head went out before the upstream answered (a loading keep-alive) never
carries an encoding it could not declare: the upstream is asked for identity, a gzip answer
is decoded, any other coding ends the stream with an error event (a real `python -m swapper`
serving cold models run by the hostile upstream)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapper.loading import PIECE, _Decoder
from tests.conftest import stop_server
from tests.hostile_upstream import exchange, hostile_cmd, http_request, read_record, start_swapper

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp = tmp_path_factory.mktemp("committed")
    record = tmp / "seen.jsonl"
    server, port = start_swapper(
        "models:\n"
        f"  gz:\n    cmd: {hostile_cmd('--default', 'gzip-sse', '--record', str(record))}\n"
        f"  br:\n    cmd: {hostile_cmd('--default', 'br-sse')}\n", tmp)
    yield port, record
    stop_server(server)


def cold_stream(port: int, model: str) -> tuple[dict[str, str], list[bytes]]:
    """A streamed chat request to a cold model: the response headers and its SSE lines."""
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    reply = exchange(port, http_request("POST", CHAT, {"content-type": "application/json",
                                                       "accept-encoding": "gzip"}, body))
    assert reply.status == 200 and reply.complete, reply
    assert reply.body.startswith(b": loading"), reply.body[:100]  # the head went out early
    return reply.headers, [line for line in reply.body.split(b"\n") if line.startswith(b"data: ")]


def test_a_gzip_answer_after_a_loading_keepalive_is_decoded(stack: tuple[int, Path]) -> None:
    port, record = stack
    headers, lines = cold_stream(port, "gz")
    assert "content-encoding" not in headers
    assert lines[-1] == b"data: [DONE]"
    text = "".join(json.loads(line[6:])["choices"][0]["delta"]["content"] for line in lines[:-1])
    assert text == "hi there"
    seen = {k.lower(): v for k, v in read_record(record)[-1]["headers"]}
    assert seen["accept-encoding"] == "identity"  # not the client's gzip


def test_a_coding_that_cannot_be_decoded_ends_the_stream_with_an_error_event(
        stack: tuple[int, Path]) -> None:
    port, _ = stack
    headers, lines = cold_stream(port, "br")
    assert "content-encoding" not in headers
    error = json.loads(lines[-1][6:])["error"]
    assert "content-encoding 'br'" in error["message"] and error["code"] == "upstream_error"


def test_a_small_body_that_inflates_hugely_is_decoded_in_bounded_pieces() -> None:
    bomb = gzip.compress(b"\0" * (8 << 20))
    decoder = _Decoder(b"gzip")
    sizes = [len(piece) for piece in decoder.pieces(bomb)]
    assert sum(sizes) == 8 << 20 and max(sizes) <= PIECE
    with pytest.raises(zlib.error):
        list(_Decoder(b"deflate").pieces(b"not deflate at all"))
