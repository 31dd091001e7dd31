"""A stream is complete by its own protocol's final event; only a real cut gets an error event."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from swapper.proxy import ResponseHook, _stream_sse
from swapper.stream_protocols import ANTHROPIC, OPENAI, RAW, RESPONSES, StreamProtocol, protocol_for
from swapper.upstream import UpstreamError

MESSAGES = (b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n'
            b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{}}\n\n'
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
RESPONSES_STREAM = (b'event: response.created\ndata: {"type":"response.created","response":{}}\n\n'
                    b'event: response.completed\ndata: {"type":"response.completed",'
                    b'"response":{"output":[' + b'{"text":"x"},' * 300 + b'{}]}}\n\n')
CHAT = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'


class FakeResponse:
    """Just what _stream_sse reads of an UpstreamResponse."""

    def __init__(self, body: bytes, cut: bool = False, headers: tuple[tuple[bytes, bytes], ...] = (),
                 step: int = 7) -> None:
        self.status, self.body, self.cut, self.step = 200, body, cut, step
        self.headers = [(b"content-type", b"text/event-stream"), *headers]
        self.complete = False  # the whole answer is in and handed out
        self._at = 0

    def header(self, name: bytes) -> str:
        return next((v.decode() for k, v in self.headers if k == name), "")

    async def next_chunk(self) -> bytes | None:
        i = self._at
        if i >= len(self.body):
            if self.cut:
                raise UpstreamError("connection reset")
            return None
        self._at += self.step
        self.complete = i + self.step >= len(self.body) and not self.cut
        return self.body[i:i + self.step]


def relay(resp: FakeResponse, protocol: StreamProtocol,
          hook: ResponseHook | None = None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(_stream_sse(resp, send, hook, [], protocol))  # type: ignore[arg-type]
    return sent[0]["headers"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("body, protocol", [(CHAT, OPENAI), (MESSAGES, ANTHROPIC),
                                            (RESPONSES_STREAM, RESPONSES), (b"data: x\n\n", RAW)])
def test_a_complete_stream_ends_with_its_own_final_event(body: bytes, protocol: StreamProtocol) -> None:
    _, out = relay(FakeResponse(body), protocol)
    assert out == body  # nothing appended, byte for byte


@pytest.mark.parametrize("body, protocol", [(CHAT, OPENAI), (MESSAGES, ANTHROPIC),
                                            (RESPONSES_STREAM, RESPONSES)])
def test_a_break_after_the_final_event_lost_nothing(body: bytes, protocol: StreamProtocol) -> None:
    assert relay(FakeResponse(body, cut=True), protocol)[1] == body


def test_a_messages_stream_cut_short_ends_with_an_anthropic_error_event() -> None:
    cut = MESSAGES[:MESSAGES.index(b"event: message_stop")]
    out = relay(FakeResponse(cut), ANTHROPIC)[1]
    last = out.removeprefix(cut)
    assert last.startswith(b"event: error\ndata: ")
    data = json.loads(last.split(b"data: ", 1)[1])
    assert data["type"] == "error" and data["error"]["type"] == "api_error"


def test_a_responses_stream_cut_short_ends_with_an_error_event_the_openai_sdk_raises_on() -> None:
    cut = RESPONSES_STREAM[:RESPONSES_STREAM.index(b"event: response.completed")]
    last = relay(FakeResponse(cut, cut=True), RESPONSES)[1].removeprefix(cut)
    assert last.startswith(b"event: error\ndata: ")
    data = json.loads(last.split(b"data: ", 1)[1])
    assert data["type"] == "error" and data["error"]["message"] == data["message"]
    assert "mid-stream" in data["message"]


def test_a_chat_stream_without_done_still_gets_the_openai_error_event() -> None:
    out = relay(FakeResponse(CHAT.replace(b"data: [DONE]\n\n", b"")), OPENAI)[1]
    assert json.loads(out.rsplit(b"\n\n", 2)[-2][6:])["error"]["type"] == "server_error"


def test_a_raw_stream_ends_when_the_upstream_ends_and_a_cut_is_still_reported() -> None:
    assert relay(FakeResponse(b"data: {}\n\n"), RAW)[1] == b"data: {}\n\n"
    assert b'"error"' in relay(FakeResponse(b"data: {}\n\n", cut=True), RAW)[1]


def test_words_in_content_never_end_a_stream() -> None:
    text = json.dumps({"type": "content_block_delta",
                       "delta": {"text": '{"type":"message_stop"}'}}).encode()
    out = relay(FakeResponse(b"data: " + text + b"\n\n"), ANTHROPIC)[1]
    assert out.endswith(b"\n\n") and b"event: error" in out


NO_START = MESSAGES[MESSAGES.index(b"event: content_block_delta"):]
"""What llama-server sends when its first token is part of a UTF-8 character (an emoji)."""


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_a_messages_stream_without_message_start_gets_one_in_front(step: int) -> None:
    out = relay(FakeResponse(NO_START, step=step), ANTHROPIC)[1]
    first, rest = out.split(b"\n\n", 1)
    assert first.startswith(b"event: message_start\ndata: ") and rest == NO_START
    message = json.loads(first.split(b"data: ", 1)[1])["message"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["id"].startswith("msg_") and message["usage"]["output_tokens"] == 0


def test_the_tier_name_lands_on_a_message_start_put_back() -> None:
    from llmstack.serving.protocols import TierName

    out = relay(FakeResponse(NO_START), ANTHROPIC, TierName("agent"))[1]
    assert json.loads(out.split(b"\n\n")[0].split(b"data: ", 1)[1])["message"]["model"] == "agent"
    assert out.endswith(NO_START)


@pytest.mark.parametrize("body", [
    MESSAGES,  # it has its message_start
    b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n',
    b'event: ping\ndata: {"type": "ping"}\n\n' + MESSAGES,
])
def test_a_messages_stream_that_may_start_as_it_does_is_left_alone(body: bytes) -> None:
    assert relay(FakeResponse(body), ANTHROPIC)[1].startswith(body)


def test_other_protocols_and_error_answers_get_no_opening_event() -> None:
    assert relay(FakeResponse(CHAT), OPENAI)[1] == CHAT
    error = FakeResponse(NO_START)
    error.status = 500
    assert relay(error, ANTHROPIC)[1] == NO_START


def test_a_stream_that_ends_inside_its_first_event_is_passed_on_whole() -> None:
    out = relay(FakeResponse(NO_START[:20]), ANTHROPIC)[1]
    assert out.startswith(NO_START[:20]) and b"event: error" in out


def test_x_accel_buffering_is_sent_once() -> None:
    headers, _ = relay(FakeResponse(CHAT, headers=((b"X-Accel-Buffering", b"no"),)), OPENAI)
    assert [k.lower() for k, _ in headers].count(b"x-accel-buffering") == 1
    headers, _ = relay(FakeResponse(CHAT), OPENAI)
    assert (b"x-accel-buffering", b"no") in headers


def test_protocol_follows_the_endpoint() -> None:
    assert protocol_for("/v1/messages?beta=true") is ANTHROPIC
    assert protocol_for("/v1/responses") is RESPONSES
    assert protocol_for("/v1/chat/completions") is OPENAI


def test_a_stream_ended_by_shutdown_gets_the_error_event_of_its_protocol() -> None:
    from swapper.reply import Reply

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    async def run() -> None:
        reply = Reply(send)
        await reply.send({"type": "http.response.start", "status": 200,
                          "headers": [(b"content-type", b"text/event-stream")]})
        assert await reply.end_with_error("the server is shutting down", ANTHROPIC)

    asyncio.run(run())
    assert sent[-1]["body"].startswith(b"event: error\ndata: {\"type\": \"error\"")


def test_the_tier_name_lands_on_message_start_and_the_first_response_event() -> None:
    from llmstack.serving.protocols import TierName
    from swapper.proxy import _FirstEventRewriter

    for stream, path in ((MESSAGES, ("message", "model")), (RESPONSES_STREAM, ("response", "model"))):
        rewriter = _FirstEventRewriter(TierName("fast"))
        out = b"".join(rewriter.feed(stream[i:i + 5]) for i in range(0, len(stream), 5))
        first = out.split(b"\n\n")[0]
        assert first.startswith(b"event: ")
        data = json.loads(first.split(b"\ndata: ", 1)[1])
        assert data[path[0]][path[1]] == "fast"
        assert out.split(b"\n\n")[1:] == stream.split(b"\n\n")[1:]


def test_the_last_piece_of_a_complete_stream_goes_out_with_its_end() -> None:
    """One message (one write) for the last piece and the end, not a piece then an empty end."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    stream = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
    asyncio.run(_stream_sse(FakeResponse(stream, step=len(stream) - 5), send, None, [],
                            OPENAI))  # type: ignore[arg-type]
    assert [m.get("more_body") for m in sent[1:]] == [True, False]
    assert sent[-1]["body"] == stream[-5:]
