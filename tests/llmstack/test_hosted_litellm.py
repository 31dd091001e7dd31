"""A hosted tier through the real litellm library, against the fake upstream as its provider."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import FAKE_UPSTREAM, free_port, start_llmstack, start_server, stop_server
from tests.hosted.conftest import needs_litellm

INI = """\
[DEFAULT]
threads = 1

[code-fast]
role = fast
backend = litellm
model = openai/fake-fast
ctx_size = 8192

[code-ultra]
role = ultra
backend = litellm
model = openai/fake-ultra
ctx_size = 200000
sampler = temp=0.3, top_p=0.9
"""


@pytest.fixture
def hosted(tmp_path: Path):
    """llmstack serving two hosted tiers whose provider is the fake upstream."""
    needs_litellm()
    provider_port, port = free_port(), free_port()
    provider = start_server([sys.executable, str(FAKE_UPSTREAM), "--port", str(provider_port),
                             "--chunks", "4"], provider_port, tmp_path / "provider.log")
    ini = tmp_path / "models.ini"
    ini.write_text(INI)
    env = {"OPENAI_API_BASE": f"{provider.base}/v1", "OPENAI_API_KEY": "sk-test",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    server = start_llmstack(tmp_path / "serve.log", "--models-ini", str(ini), env=env,
                            port=port, ready_path="/health")
    yield server
    stop_server(server)
    stop_server(provider)


def test_a_hosted_tier_answers_named_with_its_sampler_filled_in(hosted) -> None:
    status, _, body = hosted.post("/v1/chat/completions", {
        "model": "code-ultra", "top_p": 0.5, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["choices"][0]["message"]["name"] == "code-ultra"
    assert answer["choices"][0]["message"]["content"].startswith("tok")
    # what the provider received: the tier's temp filled in, the caller's top_p kept over 0.9
    assert answer["received"] == {"model": "fake-ultra", "temperature": 0.3, "top_p": 0.5}


def test_a_hosted_tier_streams_with_the_tier_name_and_done(hosted) -> None:
    status, headers, body = hosted.post("/v1/chat/completions", {
        "model": "auto", "stream": True, "messages": [{"role": "user", "content": "Say hello"}]},
        timeout=60)
    assert status == 200, body
    assert {k.lower(): v for k, v in headers.items()}["x-llmstack-tier"] == "code-ultra"
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    first = json.loads(events[0])
    assert first["choices"][0]["delta"]["name"] == "code-ultra"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1] if json.loads(e).get("choices"))
    assert text.startswith("tok")
