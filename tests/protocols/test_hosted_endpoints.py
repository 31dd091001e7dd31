"""Hosted (litellm) tiers answer chat, completions and Messages: other endpoints say so, and
``auto`` stays local there."""

from __future__ import annotations

import json
from types import SimpleNamespace

from llmstack.config.ini import parse_stack
from llmstack.serving.app import LLMStackApp
from llmstack.serving.routing import RoutingTable, estimate_tokens
from tests.llmstack.test_app_fake import INI, call, stack  # noqa: F401  (stack is a fixture)


def test_a_hosted_tier_named_on_count_tokens_is_an_anthropic_shaped_400(stack) -> None:
    server, _ = stack
    status, body = call(server, "POST", "/v1/messages/count_tokens", {
        "model": "code-ultra", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    error = json.loads(body)
    assert status == 400 and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error" and "hosted" in error["error"]["message"]


def test_auto_off_chat_completions_picks_the_highest_local_rung_that_fits() -> None:
    parsed = parse_stack(INI)
    app = SimpleNamespace(loaded=SimpleNamespace(stack=parsed, table=RoutingTable.from_stack(parsed)))
    short = {"messages": [{"role": "user", "content": "hi"}]}
    assert LLMStackApp._local_rung(app, "code-ultra", estimate_tokens(short), short) == "code-smart"  # type: ignore[arg-type]
    assert LLMStackApp._local_rung(app, "code-fast", estimate_tokens(short), short) == "code-fast"  # type: ignore[arg-type]
    huge = {"messages": [{"role": "user", "content": "w" * 4 * 100000}]}  # fits only ultra
    assert LLMStackApp._local_rung(app, "code-ultra", estimate_tokens(huge), huge) == "code-ultra"  # type: ignore[arg-type]
