"""The first-event rewriter: a tier name on the first delta, never a stalled stream."""

from __future__ import annotations

import json
from typing import Any

from swapper.proxy import _FirstEventRewriter


class Name:
    def event_bytes(self, data: bytes) -> bytes | None:
        return None  # always decoded: the generic path

    def event(self, data: dict[str, Any]) -> bool:
        if data.get("choices"):
            data["choices"][0]["delta"]["name"] = "t"
            return True
        return False

    def body(self, data: dict[str, Any]) -> None:  # pragma: no cover - not used here
        pass


def event(delta: dict) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": delta}]}).encode() + b"\n\n"


def test_first_delta_is_named_across_chunk_boundaries() -> None:
    stream = event({"role": "assistant"}) + event({"content": "hi"}) + b"data: [DONE]\n\n"
    rewriter = _FirstEventRewriter(Name())
    out = b"".join(rewriter.feed(stream[i:i + 7]) for i in range(0, len(stream), 7))
    events = [json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "name": "t"}
    assert events[1]["choices"][0]["delta"] == {"content": "hi"}
    assert out.endswith(b"data: [DONE]\n\n")


def test_crlf_framed_events_are_recognised() -> None:
    rewriter = _FirstEventRewriter(Name())
    out = rewriter.feed(event({"role": "assistant"}).replace(b"\n\n", b"\r\n\r\n"))
    assert rewriter.done and out.endswith(b"\r\n\r\n") and b'"name": "t"' in out


def test_an_unusual_stream_is_passed_through_not_held_back() -> None:
    rewriter = _FirstEventRewriter(Name())
    odd = b": keep-alive comment without a blank line " * 500  # nothing to split on
    out = rewriter.feed(odd[:10000]) + rewriter.feed(odd[10000:])
    assert rewriter.done and out == odd
