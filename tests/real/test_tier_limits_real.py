"""A tier's limits on the real llama-server and SmolLM2.

Its ``max_output_tokens`` is a cap on every protocol: asking for more (or, on
/v1/messages, for nothing: llama-server's own default is 4096) returns at most that many
tokens, streamed or not, named or through ``auto``. A prompt its window cannot hold,
which the estimate underrates (digits), comes back after the step-up retries as the
stack's own ``context_length_exceeded``, in OpenAI's and Anthropic's shapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, start_llmstack, stop_server
from tests.real.smollm2_stack import models_ini, smollm2_hub  # noqa: F401  (a fixture)

pytestmark = pytest.mark.real
CAP = 8
STORY = "Write a long story about a cat who travels the world."
DIGITS = "Add these numbers: " + " ".join(str(n) for n in range(10**6, 10**6 + 600))
"""About 4,800 characters the estimate counts as about 1,200 tokens; SmolLM2 reads one
token per digit (more than 4,000): more than either window holds."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: str,
          smollm2_hub: Path) -> Iterator[Server]:
    """``fast`` (1536 tokens) and ``agent`` (3072); every prompt longer than a token
    starts on ``fast``, as on the demo."""
    work = tmp_path_factory.mktemp("limits")
    ini = work / "models.ini"
    ini.write_text(models_ini("high_fidelity_ceiling = 0\nmid_fidelity_ceiling = 1\n",
                              fast={"role": "fast", "ctx_size": 1536, "max_output_tokens": CAP},
                              agent={"role": "agent", "ctx_size": 3072,
                                     "max_output_tokens": CAP}))
    server = start_llmstack(work / "serve.log", "--models-ini", str(ini),
                            env={"LLMSTACK_LLAMA_SERVER": llama_server_bin,
                                 "HF_HUB_CACHE": str(smollm2_hub)})
    yield server
    stop_server(server)


def sse(body: bytes) -> list[dict[str, Any]]:
    """The JSON ``data:`` values of an event stream."""
    return [json.loads(line[5:]) for line in body.decode().splitlines()
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]")]


def chat_tokens(answer: Any, streamed: bool) -> int:
    events = sse(answer) if streamed else [json.loads(answer)]
    return sum(e["usage"]["completion_tokens"] for e in events if e.get("usage"))


def messages_tokens(answer: bytes, streamed: bool) -> int:
    if not streamed:
        return int(json.loads(answer)["usage"]["output_tokens"])
    return sum(e["usage"]["output_tokens"] for e in sse(answer) if e["type"] == "message_delta")


def responses_tokens(answer: bytes, streamed: bool) -> int:
    if not streamed:
        return int(json.loads(answer)["usage"]["output_tokens"])
    [done] = [e for e in sse(answer) if e["type"] == "response.completed"]
    return int(done["response"]["usage"]["output_tokens"])


ENDPOINTS = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": STORY}],
                                      "max_tokens": 1000,
                                      "stream_options": {"include_usage": True}}, chat_tokens),
    "completions": ("/v1/completions", {"prompt": STORY + "\n\nOnce upon a time",
                                        "n_predict": 1000}, chat_tokens),
    "messages": ("/v1/messages", {"messages": [{"role": "user", "content": STORY}],
                                  "max_tokens": 1000}, messages_tokens),
    "messages, no max_tokens": ("/v1/messages", {"messages": [{"role": "user",
                                                               "content": STORY}]},
                                messages_tokens),
    "responses": ("/v1/responses", {"input": STORY, "max_output_tokens": 1000},
                  responses_tokens),
}


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_asking_for_more_than_the_cap_returns_at_most_the_cap(stack: Server, endpoint: str,
                                                              streamed: bool) -> None:
    path, body, count = ENDPOINTS[endpoint]
    model = "auto" if streamed else "fast"
    status, headers, answer = stack.post(path, {"model": model, **body, "stream": streamed},
                                         timeout=120)
    assert status == 200, answer[:500]
    assert 0 < count(answer, streamed) <= CAP
    assert headers["x-llmstack-max-tokens"] == str(CAP)


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": DIGITS}]}),
    ("/v1/responses", {"input": DIGITS, "stream": True}),
    ("/v1/messages", {"messages": [{"role": "user", "content": DIGITS}], "max_tokens": 4}),
])
def test_a_prompt_no_window_holds_is_the_stacks_context_length_exceeded(
        stack: Server, path: str, body: dict[str, Any]) -> None:
    steps = len([e for e in json.loads(stack.get("/events")[2]) if e["kind"] == "context_step_up"])
    status, _, answer = stack.post(path, {"model": "auto", **body}, timeout=120)
    error = json.loads(answer)
    assert status == 400, error
    if path == "/v1/messages":
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    else:
        assert error["error"]["code"] == "context_length_exceeded"
        assert error["error"]["type"] == "invalid_request_error"
    message = error["error"]["message"]
    assert "maximum context length is 3072 tokens (tier 'agent')" in message
    assert message.endswith("prompt is too long")
    after = [e for e in json.loads(stack.get("/events")[2]) if e["kind"] == "context_step_up"]
    assert len(after) == steps + 1 and after[-1]["to_tier"] == "agent"
