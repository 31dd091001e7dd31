"""The auto router's estimate reads Anthropic Messages and Responses bodies, not just chat."""

from __future__ import annotations

import json

from llmstack.serving.routing import IMAGE_TOKENS, RoutingTable, Rung, _measure, classify

TOOLS = [{"name": "read", "description": "read a file", "input_schema": {"type": "object"}}]


def tokens(body: dict) -> int:
    return _measure(body).tokens


def test_anthropic_system_blocks_tools_tool_use_tool_result_and_images_count() -> None:
    base = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert tokens(base) == 100
    assert tokens({**base, "system": "s" * 400}) == 200
    assert tokens({**base, "system": [{"type": "text", "text": "s" * 800}]}) == 300
    assert tokens({**base, "tools": TOOLS}) == 100 + len(json.dumps(TOOLS, separators=(",", ":"))) // 4
    use = {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "read", "input": {"path": "p" * 396}}]}
    result = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "r" * 800}]}]}
    body = {"messages": [*base["messages"], use, result]}
    assert tokens(body) > 100 + 100 + 200 - 1
    image = {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}
    assert tokens({"messages": [image]}) == IMAGE_TOKENS


def test_a_user_message_of_only_tool_results_is_no_user_turn() -> None:
    result = {"role": "user", "content": [{"type": "tool_result", "content": "ok"}]}
    assert _measure({"messages": [{"role": "user", "content": "hi"}, result]}).user_turns == 1


def test_anthropic_system_prompt_can_trigger_ultra() -> None:
    table = RoutingTable(fast=Rung("f"), agent=Rung("a"), ultra=Rung("u"),
                         high_fidelity_ceiling=0, mid_fidelity_ceiling=1)
    body = {"system": [{"type": "text", "text": "[ultra] think hard " * 50}],
            "messages": [{"role": "user", "content": "x" * 100}]}
    assert classify(body, table).tier == "u"


def test_responses_input_instructions_and_tools_count() -> None:
    assert tokens({"input": "x" * 400}) == 100
    assert tokens({"input": "x" * 400, "instructions": "i" * 400}) == 200
    items = [{"role": "user", "content": [{"type": "input_text", "text": "x" * 400},
                                          {"type": "input_image", "image_url": "data:"}]},
             {"type": "function_call", "name": "read", "arguments": "a" * 396},
             {"type": "function_call_output", "call_id": "c", "output": "o" * 400}]
    assert tokens({"input": items}) == 300 + IMAGE_TOKENS
    tools = [{"type": "function", "name": "read", "parameters": {}}]
    assert tokens({"input": "x" * 400, "tools": tools}) > 100
    assert _measure({"input": "hi"}).user_turns == 1


def test_responses_max_output_tokens_is_the_requested_output() -> None:
    table = RoutingTable(fast=Rung("f", 1000), agent=Rung("a", 100000),
                         high_fidelity_ceiling=0, mid_fidelity_ceiling=0)
    body = {"input": "x" * 40}
    assert classify(body, table).tier == "a"  # 10 + the 1024 reserve: fast cannot hold it
    assert classify({**body, "max_output_tokens": 500}, table).tier == "f"  # 10 + 500
