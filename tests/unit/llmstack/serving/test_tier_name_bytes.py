"""The tier name inserted into a chat chunk's bytes agrees with the decoded rewrite, and
every chunk whose bytes leave doubt is left to the decoded path."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from llmstack.serving.protocols import TierName

FIRST = {"choices": [{"finish_reason": None, "index": 0,
                      "delta": {"role": "assistant", "content": None}}],
         "created": 1, "id": "chatcmpl-1", "model": "m", "object": "chat.completion.chunk"}


def decoded(data: dict[str, Any], tier: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    assert TierName(tier).event(data)
    return data


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])  # llama-server; Python
@pytest.mark.parametrize("delta", [{"role": "assistant", "content": None}, {},
                                   {"content": "a \"delta\": {x} }, { \\\" "}])
@pytest.mark.parametrize("tier", ["fast", "t\"é\\"])
def test_the_bytes_rewrite_equals_the_decoded_one(separators: tuple[str, str],
                                                  delta: dict[str, Any], tier: str) -> None:
    data = {**FIRST, "choices": [{**FIRST["choices"][0], "delta": delta}]}
    raw = json.dumps(data, separators=separators, ensure_ascii=False).encode()
    rewritten = TierName(tier).event_bytes(raw)
    assert rewritten is not None
    assert json.loads(rewritten) == decoded(data, tier)


@pytest.mark.parametrize("data", [
    {**FIRST, "choices": [{"index": 0, "delta": {"role": "assistant", "name": "x"}}]},
    {**FIRST, "choices": [{"index": 0, "delta": {}}, {"index": 1, "delta": {}}]},
    {**FIRST, "choices": [{"index": 0, "x": {}}, {"index": 1, "delta": {}}]},
    {**FIRST, "choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"name": "b"}}]}}]},
    {"type": "message_start", "message": {"model": "m"}},
    {"choices": []},
])
def test_doubtful_bytes_are_left_to_the_decoded_path(data: dict[str, Any]) -> None:
    assert TierName("fast").event_bytes(json.dumps(data).encode()) is None
