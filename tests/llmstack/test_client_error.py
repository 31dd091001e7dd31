"""Upstream errors as the client's protocol spells them (pure)."""

from __future__ import annotations

import json

from llmstack.serving.protocols import client_error
from swapper.proxy import Intercepted

OVERFLOW = json.dumps({"error": {
    "code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 4834, "n_ctx": 3072,
    "message": "request (4834 tokens) exceeds the available context size (3072 tokens), try "
               "increasing it"}}).encode()


def answer(body: bytes, status: int = 400) -> Intercepted:
    return Intercepted(status, body, [(b"content-type", b"application/json"),
                                      (b"content-length", str(len(body)).encode())])


def test_llama_servers_overflow_is_the_stacks_context_length_exceeded() -> None:
    shaped = client_error(answer(OVERFLOW), "/v1/responses", "agent")
    error = json.loads(shaped.body)["error"]
    assert (shaped.status, error["type"], error["code"]) == (
        400, "invalid_request_error", "context_length_exceeded")
    assert error["message"] == ("This model's maximum context length is 3072 tokens (tier "
                                "'agent'), but this request has 4834 input tokens: prompt is "
                                "too long")
    assert (b"content-length", str(len(shaped.body)).encode()) in shaped.headers
    anthropic = json.loads(client_error(answer(OVERFLOW), "/v1/messages", "agent").body)
    assert anthropic == {"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": error["message"]}}


def test_an_overflow_without_counts_still_says_so() -> None:
    body = b'{"error": {"type": "exceed_context_size_error", "n_ctx": "many"}}'
    error = json.loads(client_error(answer(body), "/v1/chat/completions", "fast").body)["error"]
    assert error["code"] == "context_length_exceeded" and error["message"].endswith(
        "prompt is too long")


def test_other_errors_pass_unchanged() -> None:
    other = answer(b'{"error": {"code": 400, "message": "bad", "type": "invalid_request_error"}}')
    assert client_error(other, "/v1/chat/completions", "fast") is other
