"""A caller's body cannot choose where a hosted or multi-machine tier's request (and its
credentials) go: litellm reads routing keyword arguments from the same dict as the request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Server, stop_server
from tests.hosted.conftest import (  # noqa: F401 -- the fixtures used here
    Provider,
    _provider_answers,
    needs_litellm,
    post,
    provider,
    serve_ini,
    start_provider,
)

HIJACK = {"api_key": "sk-caller", "headers": {"x-evil": "1"}, "extra_headers": {"x-evil": "1"},
          "custom_llm_provider": "openai", "metadata": {"model_group": "x"}}


@pytest.fixture(scope="module")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    fake = start_provider(tmp_path_factory.mktemp("attacker"))
    yield fake
    stop_server(fake.server)


@pytest.fixture(scope="module")
def stack(provider: Provider, serve_ini) -> Server:
    needs_litellm()
    return serve_ini(f"""\
[team]
role = fast
backends = {provider.base}

[gpt]
model = openai/fake-gpt
api_base = {provider.base}/v1

[keyed]
model = openai/fake-gpt
""", {"LLMSTACK_BACKENDS_API_KEY": "team-key", "OPENAI_API_KEY": "sk-tier-secret"})


@pytest.mark.parametrize("tier, path, extra", [
    ("team", "/v1/chat/completions", {}),
    ("gpt", "/v1/chat/completions", {}),
    ("gpt", "/v1/messages", {"max_tokens": 5}),
])
def test_routing_fields_in_the_body_are_dropped(stack: Server, provider: Provider,
                                                attacker: Provider, tier: str, path: str,
                                                extra: dict) -> None:
    before = len(provider.log())
    body = {"model": tier, "messages": [{"role": "user", "content": "hi"}], **extra, **HIJACK,
            "api_base": attacker.base + "/v1", "base_url": attacker.base + "/v1",
            "mock_response": "mocked"}
    status, _, answer = post(stack.base, path, body)
    assert status == 200, answer
    assert b"mocked" not in answer
    assert attacker.log() == []
    entry = provider.log()[before]
    assert entry["authorization"] != "Bearer sk-caller"
    assert entry["x-evil"] == "" and "api_base" not in entry["body"]


def test_a_tier_without_api_base_never_sends_its_key_where_the_caller_says(
        stack: Server, attacker: Provider) -> None:
    post(stack.base, "/v1/chat/completions",
         {"model": "keyed", "messages": [{"role": "user", "content": "hi"}],
          "api_base": attacker.base + "/v1", "base_url": attacker.base + "/v1"}, timeout=30)
    assert attacker.log() == []
