"""A tier's ``max_output_tokens`` is a cap on every protocol, on the real llama-server and
SmolLM2: asking for more (or, on /v1/messages, for nothing: llama-server's own default is
4096) returns at most that many tokens, streamed or not, named or through ``auto``."""

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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: str,
          smollm2_hub: Path) -> Iterator[Server]:  # noqa: F811
    work = tmp_path_factory.mktemp("cap")
    ini = work / "models.ini"
    ini.write_text(models_ini(fast={"role": "fast", "ctx_size": 2048,
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
