"""The routing memo: the same decisions as without it, with repeated work done once."""

from __future__ import annotations

import json
from typing import Any

from llmstack.serving.routing import RoutingTable, Rung, classify, estimate_tokens
from llmstack.serving.routing_memo import MIN_TEXT, RoutingMemo

TABLE = RoutingTable(fast=Rung("fast"), agent=Rung("agent"), ultra=Rung("ultra"),
                     high_fidelity_ceiling=3000, mid_fidelity_ceiling=6000)
SYSTEM = "You are an agent. " * 200  # longer than MIN_TEXT: its trigger scan is remembered


def tool(name: str, description: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object"}}}


def body(turn: int, tools: list[dict[str, Any]], system: str = SYSTEM) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}]
    messages += [{"role": "user", "content": f"turn {i}"} for i in range(turn)]
    return {"model": "auto", "messages": messages, "tools": tools, "stream": True}


def both(memo: RoutingMemo, data: dict[str, Any]) -> tuple[Any, Any]:
    raw = json.dumps(data, separators=(",", ":")).encode()
    parsed = json.loads(raw)
    return classify(parsed, TABLE, memo=memo.for_body(raw)), classify(json.loads(raw), TABLE)


def test_every_turn_decides_as_without_the_memo_and_tools_are_measured_once() -> None:
    memo = RoutingMemo()
    tools = [tool("bash", "run a command " * 300), tool("read", "read a file")]
    calls: list[int] = []
    for turn in range(1, 5):
        raw = json.dumps(body(turn, tools)).encode()
        bound = memo.for_body(raw)
        calls.append(bound.json_chars("tools", json.loads(raw)["tools"], lambda v: len(calls)))
        with_memo, without = both(memo, body(turn, tools))
        assert with_memo == without
    assert calls == [0, 0, 0, 0]  # measured at the first turn only, then remembered
    assert len(memo.schemas) == 2  # the compact and the spaced encodings of the same tools


def test_changed_tools_are_measured_again() -> None:
    memo = RoutingMemo()
    first = [tool("bash", "x" * 4000)]
    for tools in (first, [tool("bash", "x" * 9000)], [tool("bash2", "x" * 4000)], first):
        with_memo, without = both(memo, body(1, tools))
        assert with_memo == without


def test_a_nested_tools_key_with_other_names_is_not_taken_for_the_same_tools() -> None:
    memo = RoutingMemo()
    nested = {"type": "object", "properties": {"tools": {"type": "array"}}}
    for name in ("a", "b"):
        tools = [tool(name, "y" * (4000 if name == "a" else 20000)),
                 {"type": "function", "function": {"name": "z", "parameters": nested}}]
        with_memo, without = both(memo, body(1, tools))
        assert with_memo == without


def test_a_trigger_in_a_long_system_prompt_is_found_and_remembered() -> None:
    memo = RoutingMemo()
    system = "x" * MIN_TEXT + "\nultra: think hard"
    for _ in range(2):
        with_memo, without = both(memo, body(1, [], system))
        assert with_memo == without and with_memo.reason == "ultra-trigger"
    assert len(memo.triggers) == 1


def test_the_memos_are_bounded() -> None:
    memo = RoutingMemo(max_entries=3)
    for i in range(10):
        both(memo, body(1, [tool(f"t{i}", "z" * 100)], SYSTEM + str(i)))
    assert len(memo.schemas) == 3 and len(memo.triggers) == 3


def test_a_named_requests_estimate_uses_the_memo_and_scans_no_trigger() -> None:
    memo = RoutingMemo()
    tools = [tool("bash", "run a command " * 300)]
    data = body(3, tools, system="Use [ultra] care. " + SYSTEM)
    raw = json.dumps(data).encode()
    assert estimate_tokens(json.loads(raw), memo.for_body(raw)) == estimate_tokens(data)
    assert len(memo.schemas) == 1 and len(memo.triggers) == 0  # tools kept, no trigger scan
    assert estimate_tokens(json.loads(raw), memo.for_body(raw)) == estimate_tokens(data)
