"""A tier's output cap (pure): what one answer may generate, on every protocol."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmstack.config.ini import parse_stack
from llmstack.serving.app import MAX_TOKENS_HEADER, _capped
from llmstack.serving.output_cap import (
    OUTPUT_FIELDS,
    OUTPUT_RESERVE,
    PROTOCOL_FIELDS,
    BadOutputField,
    Clamped,
    asked_output,
    clamp,
    output_limit,
    output_reserve,
)
from swapper.http_app import ModelRequest

CHAT, COMPLETIONS, MESSAGES, RESPONSES = PROTOCOL_FIELDS


def test_the_limit_is_the_tier_cap_and_what_the_window_leaves() -> None:
    assert output_limit(64, 8192, 100) == 64
    assert output_limit(0, 8192, 100) == 8092
    assert output_limit(8192, 8192, 7000) == 1192
    assert output_limit(0, 8192, 8000) == OUTPUT_RESERVE  # the estimate is rough: a reserve
    assert output_limit(0, 512, 9000) == 512  # a window smaller than the reserve: all of it
    assert output_limit(0, 0, 100) is None and output_limit(32, 0, 100) == 32


@pytest.mark.parametrize("path, field", [(CHAT, "max_tokens"), (COMPLETIONS, "max_tokens"),
                                         (MESSAGES, "max_tokens"),
                                         (RESPONSES, "max_output_tokens")])
def test_every_protocol_gets_at_most_the_cap(path: str, field: str) -> None:
    assert clamp({field: 1000}, path, 64) == Clamped(64, {field: 64})
    assert clamp({field: 10}, path, 64) == Clamped(10, {})  # asks for less: unchanged
    assert clamp({}, path, 64) == Clamped(64, {field: 64})  # asks for nothing: gets the cap
    assert clamp({field: 1000}, path, None) == Clamped(1000, {})  # no limit known
    assert clamp({}, path, None) == Clamped(None, {})


def test_every_output_field_is_clamped_and_the_least_asked_wins() -> None:
    body = {"n_predict": 5000, "max_completion_tokens": 300, "max_tokens": None}
    assert clamp(body, CHAT, 1000) == Clamped(300, {"n_predict": 300, "max_tokens": 300})
    # n_predict alone: llama-server reads it, a hosted tier does not, so max_tokens is added
    assert clamp({"n_predict": 900}, CHAT, 64) == Clamped(64, {"n_predict": 64, "max_tokens": 64})
    # max_completion_tokens is the chat protocol's own: no max_tokens beside it
    assert clamp({"max_completion_tokens": 9}, CHAT, 64) == Clamped(9, {})
    # llama-server's -1 (no limit) is clamped like an absent field
    assert clamp({"n_predict": -1}, COMPLETIONS, 64) == Clamped(
        64, {"n_predict": 64, "max_tokens": 64})


def test_endpoints_that_do_not_generate_are_left_alone() -> None:
    for path in ("/v1/messages/count_tokens", "/v1/embeddings", "/v1/rerank"):
        assert clamp({"max_tokens": 5000}, path, 64) == Clamped(None, {})


@pytest.mark.parametrize("value", ["100", 1.5, True, [1], {"a": 1}])
def test_a_field_that_is_not_an_integer_is_refused(value: Any) -> None:
    with pytest.raises(BadOutputField, match="'max_tokens' must be an integer"):
        asked_output({"max_tokens": value})


def test_the_reserve_is_small_and_never_more_than_allowed() -> None:
    assert output_reserve(None, 0) == OUTPUT_RESERVE
    assert output_reserve(32000, 0) == OUTPUT_RESERVE  # Claude Code's 32000 needs no room
    assert output_reserve(100, 0) == 100 and output_reserve(None, 64) == 64
    assert output_reserve(0, 0) == 0


@given(st.dictionaries(st.sampled_from(OUTPUT_FIELDS),
                       st.one_of(st.none(), st.integers(-5, 100_000))),
       st.sampled_from(list(PROTOCOL_FIELDS)), st.integers(0, 50_000), st.integers(0, 65536),
       st.integers(0, 70_000))
def test_no_field_of_a_clamped_body_asks_for_more_than_the_limit(
        body: dict[str, Any], path: str, cap: int, ctx: int, prompt: int) -> None:
    limit = output_limit(cap, ctx, prompt)
    tokens, changes = clamp(body, path, limit)
    clamped = {**body, **changes}
    if limit is not None:
        assert tokens is not None and tokens <= limit
        assert any(clamped.get(f) == tokens for f in PROTOCOL_FIELDS[path])
        assert all(clamped[f] == tokens for f in OUTPUT_FIELDS if f in clamped)


def request(path: str, data: dict[str, Any]) -> ModelRequest:
    import json

    return ModelRequest("fast", path, json.dumps(data).encode(), data)


def test_the_body_is_rewritten_once_and_only_when_a_field_changes() -> None:
    tier = parse_stack("[fast]\nhf_repo = a/b\nhf_file = c.gguf\nctx_size = 8192\n"
                       "max_output_tokens = 64\n").tiers[0]
    asked_less = request(CHAT, {"messages": [], "max_tokens": 8})
    capped = _capped(asked_less, tier, 100, encode=True)
    assert capped.body is asked_less.body and capped.data is asked_less.data
    assert (MAX_TOKENS_HEADER, b"8") in capped.hooks.extra_headers
    claude = request(MESSAGES, {"messages": [], "max_tokens": 32000, "stream": True})
    capped = _capped(claude, tier, 100, encode=True)
    assert capped.body == b'{"messages":[],"max_tokens":64,"stream":true}'
    assert claude.data == {"messages": [], "max_tokens": 32000, "stream": True}  # a copy
    assert (MAX_TOKENS_HEADER, b"64") in capped.hooks.extra_headers
    hosted = _capped(claude, tier, 100, encode=False)  # litellm reads the data, not the body
    assert hosted.body is claude.body and hosted.data == {**claude.data, "max_tokens": 64}
    embeddings = request("/v1/embeddings", {"input": "x"})
    assert _capped(embeddings, tier, 1, encode=True) is embeddings


def test_a_remote_tier_without_a_cap_adds_no_field_a_request_did_not_send() -> None:
    """A provider's window is not its output limit (200k in, 16k or 64k out): sending
    ``max_tokens`` = what the window leaves made OpenAI and Anthropic refuse the request.
    A remote tier only lowers what a request asks for; with ``max_output_tokens`` it adds it."""
    ini = ("[DEFAULT]\n[gpt]\nbackend = litellm\nmodel = openai/gpt-4o\nctx_size = 200000\n"
           "[capped]\nbackend = litellm\nmodel = openai/gpt-4o\nctx_size = 200000\n"
           "max_output_tokens = 300\n")
    gpt, capped = parse_stack(ini).tiers
    silent = request(CHAT, {"messages": []})
    assert _capped(silent, gpt, 100, encode=False) is silent
    assert clamp({"messages": []}, CHAT, 199_900, fill=False) == Clamped(None, {})
    greedy = request(CHAT, {"messages": [], "max_tokens": 250_000})
    assert _capped(greedy, gpt, 100, encode=False).data["max_tokens"] == 199_900
    assert _capped(silent, capped, 100, encode=False).data == {"messages": [], "max_tokens": 300}
