"""Hosted tiers through ``llmstack serve`` and real litellm, against a loopback provider fake.

One fake speaks both OpenAI chat completions (the ``openai/`` tier, via
``api_base``) and Anthropic Messages (the ``anthropic/`` tier); it logs every
body it receives, so the samplers llmstack injects are checked where they land.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from tests.conftest import Server, wait_until
from tests.hosted.conftest import Provider, needs_litellm, post, sse_events

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
CLAUDE_KEY = "sk-ant-from-the-users-yaml"
USER_YAML = """\
# my own litellm config: comments and keys llmstack does not know must survive
litellm_settings:
  drop_params: true
  request_timeout: 120
model_list:
  - model_name: claude          # the tier's credentials live here
    litellm_params:
      model: anthropic/an-old-id
      api_key: os.environ/MY_CLAUDE_KEY
  - model_name: something-else
    litellm_params: {model: openai/other}
mcp_servers: {}
"""


def ini(provider: Provider) -> str:
    return f"""\
[gpt]
role = fast
model = openai/fake-gpt
api_base = {provider.base}/v1
sampler = temp=0.3, top_p=0.9
max_output_tokens = 3

[claude]
role = ultra
model = anthropic/claude-fake
api_base = {provider.base}
ctx_size = 200000
sampler = temp=0.6, top_k=20
"""


@pytest.fixture(scope="module")
def yaml_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("user") / "litellm_config.yaml"


@pytest.fixture(scope="module")
def stack(provider: Provider, serve_ini, yaml_path: Path) -> Server:
    needs_litellm()
    yaml_path.write_text(USER_YAML)
    return serve_ini(ini(provider), {"OPENAI_API_KEY": "sk-openai-env",
                                     "MY_CLAUDE_KEY": CLAUDE_KEY,
                                     "LLMSTACK_LITELLM_CONFIG": str(yaml_path)})


def last_body(provider: Provider) -> dict:
    return provider.log()[-1]["body"]


def test_openai_tier_injects_samplers_keeps_the_callers_and_caps_output(stack, provider) -> None:
    status, headers, body = post(stack.base, CHAT, {"model": "gpt", "messages": HI,
                                                    "temperature": 1.1, "max_tokens": 100})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["choices"][0]["message"] == {**answer["choices"][0]["message"], "name": "gpt",
                                               "content": "hello from the "}
    sent = last_body(provider)
    assert sent["model"] == "fake-gpt"
    assert sent["temperature"] == 1.1 and sent["top_p"] == 0.9  # caller's kept, tier's filled in
    assert sent["max_tokens"] == 3  # max_output_tokens caps what the caller asked
    assert headers["x-llmstack-max-tokens"] == "3"
    status, headers, body = post(stack.base, CHAT, {"model": "gpt", "messages": HI})
    assert status == 200 and last_body(provider)["max_tokens"] == 3  # also when it asks nothing
    assert provider.log()[-1]["authorization"] == "Bearer sk-openai-env"


def test_openai_tier_streams_sse_chunks_with_the_usage_chunk(stack, provider) -> None:
    status, headers, body = post(stack.base, CHAT, {"model": "gpt", "messages": HI, "stream": True})
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = sse_events(body)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["name"] == "gpt"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) \
        == "hello from the "
    assert [c["choices"][0]["finish_reason"] for c in chunks
            if c["choices"] and c["choices"][0].get("finish_reason")] == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert last_body(provider)["stream_options"] == {"include_usage": True}


def test_anthropic_tier_answers_chat_completions_both_ways(stack, provider, yaml_path) -> None:
    status, headers, body = post(stack.base, CHAT, {"model": "auto", "messages": [
        {"role": "user", "content": "[ultra] think hard"}], "temperature": 0.1})
    assert status == 200, body
    assert headers["x-llmstack-tier"] == "claude"
    assert json.loads(body)["choices"][0]["message"]["content"] == "hello from the fake provider"
    entry = provider.log()[-1]
    assert entry["path"] == "/v1/messages" and entry["x-api-key"] == CLAUDE_KEY  # from the yaml
    sent = entry["body"]
    assert sent["model"] == "claude-fake"  # models.ini's model beats the yaml's old id
    assert sent["temperature"] == 0.1 and sent["top_k"] == 20

    status, _, body = post(stack.base, CHAT, {"model": "claude", "messages": HI, "stream": True})
    events = sse_events(body)
    assert status == 200 and events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) \
        == "hello from the fake provider"
    assert any(c.get("usage") for c in chunks)
    assert yaml_path.read_text() == USER_YAML  # never rewritten


def test_anthropic_messages_endpoint_serves_hosted_tiers(stack, provider) -> None:
    request = {"model": "claude", "max_tokens": 50, "messages": HI}
    status, headers, body = post(stack.base, "/v1/messages", request)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["type"] == "message"
    assert answer["content"][0]["text"] == "hello from the fake provider"
    assert last_body(provider)["top_k"] == 20 and last_body(provider)["temperature"] == 0.6

    status, headers, body = post(stack.base, "/v1/messages", {**request, "stream": True})
    assert status == 200 and headers["content-type"] == "text/event-stream"
    kinds = [json.loads(e)["type"] for e in sse_events(body)]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds

    status, _, body = post(stack.base, "/v1/messages", {**request, "model": "gpt"})
    assert status == 200, body  # an OpenAI tier behind the Anthropic endpoint: litellm translates
    assert json.loads(body)["content"][0]["text"] == "hello from the "


@pytest.mark.parametrize("tier", ["gpt", "claude"])
def test_provider_errors_keep_status_and_type(stack, provider, tier: str) -> None:
    provider.mode(mode="error", status=429, type="rate_limit_error", message="slow down")
    status, _, body = post(stack.base, CHAT, {"model": tier, "messages": HI})
    error = json.loads(body)["error"]
    assert status == 429 and error["type"] == "rate_limit_error" and "slow down" in error["message"]

    provider.mode(mode="error", status=400, type="invalid_request_error",
                  code="context_length_exceeded",
                  message="This model's maximum context length is 8192 tokens. "
                          "However, your messages resulted in 9000 tokens.")
    status, _, body = post(stack.base, CHAT, {"model": tier, "messages": HI, "stream": True})
    error = json.loads(body)["error"]
    assert status == 400 and error["type"] == "invalid_request_error"
    assert error["code"] == "context_length_exceeded"


@pytest.mark.parametrize("tier", ["gpt", "claude"])
def test_a_cut_provider_stream_is_an_error_event_never_a_stop(stack, provider, tier: str) -> None:
    provider.mode(mode="cut")
    status, _, body = post(stack.base, CHAT, {"model": tier, "messages": HI, "stream": True})
    assert status == 200  # the stream had started
    events = sse_events(body)
    assert b"[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["type"] == "server_error" and last["error"]["code"] == "stream_cut"
    finishes = [c["choices"][0].get("finish_reason") for c in map(json.loads, events[:-1])
                if c.get("choices")]
    assert "stop" not in finishes
    text = "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in map(json.loads, events[:-1]) if c.get("choices"))
    assert text == "hello from "


def test_a_cut_stream_on_the_messages_endpoint_ends_in_an_error_event(stack, provider) -> None:
    provider.mode(mode="cut")
    status, _, body = post(stack.base, "/v1/messages", {"model": "claude", "max_tokens": 50,
                                                        "messages": HI, "stream": True})
    assert status == 200
    kinds = [json.loads(e)["type"] for e in sse_events(body)]
    assert kinds[-1] == "error" and "message_stop" not in kinds


def test_models_list_hosted_tiers_and_credentials_stay_out_of_logs(stack) -> None:
    rows = {r["id"]: r for r in json.loads(stack.get("/v1/models")[2])["data"]}
    assert rows["claude"]["backend"] == "litellm"
    assert rows["claude"]["hosted_model"] == "anthropic/claude-fake"
    post(stack.base, CHAT, {"model": "claude", "messages": HI})
    assert CLAUDE_KEY not in stack.output() and "sk-openai-env" not in stack.output()


def test_auto_steps_up_when_a_hosted_tier_refuses_a_prompt_as_too_long(provider,
                                                                       serve_ini) -> None:
    stack = serve_ini(f"""\
[ROUTING]
high_fidelity_ceiling = 0
mid_fidelity_ceiling = 1

[small]
role = fast
model = openai/fake-small
api_base = {provider.base}/v1
ctx_size = 8192

[big]
role = agent
model = openai/fake-big
api_base = {provider.base}/v1
ctx_size = 65536
""", {"OPENAI_API_KEY": "sk-test"})
    provider.mode(mode="error", status=400, type="invalid_request_error",
                  message="the request exceeds the available context size, try increasing it")
    before = len(provider.log())
    status, _, body = post(stack.base, CHAT, {"model": "auto", "messages": [
        {"role": "user", "content": "a prompt of a few tokens lands on the fast rung"}]})
    assert status == 400 and json.loads(body)["error"]["code"] == "context_length_exceeded"
    assert [e["body"]["model"] for e in provider.log()[before:]] == ["fake-small", "fake-big"]
    events = json.loads(stack.get("/events")[2])
    assert any(e["kind"] == "context_step_up" and e["to_tier"] == "big" for e in events)


def test_a_client_that_leaves_stops_the_provider_stream(stack, provider) -> None:
    provider.mode(mode="ok", delay_ms=2500)  # long gaps: only a watch on the client sees it go
    before = json.loads(provider.server.get("/_disconnects")[2])
    host, port = stack.base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", CHAT, json.dumps({"model": "gpt", "messages": HI, "stream": True}),
                       {"content-type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.read1(65536).startswith(b"data: ")
    connection.close()  # the client leaves after the first chunk
    wait_until(lambda: json.loads(provider.server.get("/_disconnects")[2]) == before + 1, 1.5,
               "the provider to see llmstack hang up")
