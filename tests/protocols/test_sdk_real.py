"""The openai, anthropic and litellm clients against ``llmstack serve --demo`` (real llama-server,
the real model: SmolLM2-135M-Instruct answers, so answers are checked for what they say)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from llmstack.config.demo import demo_stack
from llmstack.models.demo import demo_files
from llmstack.models.gguf_info import read_gguf_info
from llmstack.settings import Settings, prepare_for_litellm
from tests.conftest import Server
from tests.ui.conftest import scrape

if TYPE_CHECKING:  # the SDKs are imported by the tests that use them (collection stays fast)
    import anthropic
    import openai

pytestmark = pytest.mark.real
CHAT_PATH = "/v1/chat/completions"
TOO_LONG = "word " * 60000  # ~75k tokens: beyond every demo window (the largest is 8192)
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def oai(server: Server) -> openai.OpenAI:
    import openai

    return openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0)


def claude(server: Server) -> anthropic.Anthropic:
    import anthropic

    return anthropic.Anthropic(base_url=server.base, api_key="none", max_retries=0)


HELLO = [{"role": "user", "content": "Say hello"}]


def names_paris(ask: Callable[[], str]) -> str:
    """``ask`` the model until an answer names Paris (SmolLM2 does 147 times in 150), at most
    three times; the last answer."""
    for _ in range(3):
        answer = ask()
        if "Paris" in answer:
            return answer
    raise AssertionError(f"three answers without Paris, the last: {answer!r}")


def refusals(server: Server, endpoint: str, model: str | None = None) -> float:
    """``swapper_requests_total`` with status 400 on ``endpoint`` (for ``model``, or all)."""
    return sum(value for (name, labels), value in scrape(server).items()
               if name == "swapper_requests_total" and ("endpoint", endpoint) in labels
               and ("status", "400") in labels
               and (model is None or ("model", model) in labels))


@pytest.mark.parametrize("model, tier", [("auto", "agent"), ("plan", "plan"), ("small", "fast")])
def test_messages_create_names_the_tier_and_its_headers(demo: Server, model: str, tier: str) -> None:
    raw = claude(demo).messages.with_raw_response.create(model=model, max_tokens=8, messages=HELLO)
    message = raw.parse()
    assert message.type == "message" and message.content[0].type == "text"
    assert message.content[0].text.strip() and message.usage.output_tokens <= 8
    assert message.model == tier
    assert raw.headers["x-llmstack-tier"] == tier and int(raw.headers["x-llmstack-tokens"]) > 0


@pytest.mark.parametrize("model, tier", [("auto", "agent"), ("plan", "plan")])
def test_messages_stream_ends_with_message_stop_and_no_error(demo: Server, model: str, tier: str) -> None:
    events = list(claude(demo).messages.create(model=model, max_tokens=8, messages=HELLO,
                                               stream=True))
    assert events[0].type == "message_start" and events[0].message.model == tier
    assert events[-1].type == "message_stop"
    # and on the wire: nothing (no injected error event) after message_stop
    with httpx.stream("POST", demo.base + "/v1/messages", timeout=60, json={
            "model": model, "max_tokens": 8, "stream": True, "messages": HELLO}) as resp:
        wire = b"".join(resp.iter_bytes())
    assert wire.rstrip().rsplit(b"\n\n", 1)[-1].startswith(b"event: message_stop")
    assert b"event: error" not in wire


def test_a_messages_stream_opens_with_message_start_when_the_answer_opens_with_an_emoji(
        demo: Server) -> None:
    """llama-server leaves out ``message_start`` when its first token is part of a UTF-8
    character; the stack puts it back (the SDK's stream helper, like Claude Code, raises
    "Unexpected event order" without it)."""
    emoji = [{"role": "user", "content": "Reply with one emoji only, like 🌟"}]
    openers = []
    for seed in range(1, 4):  # SmolLM2 opens with the emoji on most seeds at temperature 1
        with claude(demo).messages.stream(model="plan", max_tokens=4, messages=emoji,  # type: ignore[arg-type]
                                          extra_body={"seed": seed, "temperature": 1.0}) as stream:
            events = list(stream)
            text = stream.get_final_text()
        assert events[0].type == "message_start" and events[0].message.model == "plan"
        openers.append(text[:1])
    assert any(len(c.encode()) == 4 for c in openers), f"no emoji opened an answer: {openers}"


def test_messages_with_tools_and_a_system_prompt_route_on_auto(demo: Server) -> None:
    tools = [{"name": "read", "description": "read a file",
              "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]
    raw = claude(demo).messages.with_raw_response.create(
        model="auto", max_tokens=8, system=[{"type": "text", "text": "You are terse. " * 50}],
        tools=tools, messages=HELLO)  # type: ignore[arg-type]
    assert raw.parse().model == "agent"
    assert int(raw.headers["x-llmstack-tokens"]) > len("You are terse. " * 50) // 4


def test_count_tokens_works_with_auto(demo: Server) -> None:
    raw = claude(demo).messages.with_raw_response.count_tokens(model="auto", messages=HELLO)
    assert raw.parse().input_tokens > 0
    assert raw.headers["x-llmstack-tier"] == "agent"


@pytest.mark.parametrize("model, tier", [("auto", "agent"), ("fast", "fast")])
def test_responses_stream_completes_without_an_exception(demo: Server, model: str, tier: str) -> None:
    events = list(oai(demo).responses.create(model=model, input="Say hello", max_output_tokens=8,
                                             stream=True))
    assert events[-1].type == "response.completed"
    assert events[0].response.model == tier  # type: ignore[union-attr]
    response = oai(demo).responses.create(model=model, input="Say hello", max_output_tokens=8,
                                          instructions="Be brief.")
    assert response.status == "completed" and response.model == tier
    assert response.output_text.strip()


def test_every_client_gets_the_real_answer(demo: Server) -> None:
    """chat, Messages, Responses and litellm, on ``auto``: SmolLM2 names Paris."""
    prepare_for_litellm()
    import litellm

    names_paris(lambda: oai(demo).chat.completions.create(
        model="auto", messages=FRANCE, max_tokens=32).choices[0].message.content or "")  # type: ignore[arg-type]
    names_paris(lambda: "".join(block.text for block in claude(demo).messages.create(
        model="auto", max_tokens=32, messages=FRANCE).content if block.type == "text"))  # type: ignore[arg-type]
    names_paris(lambda: oai(demo).responses.create(
        model="auto", input="What is the capital of France?", max_output_tokens=32).output_text)
    names_paris(lambda: litellm.completion(
        model="openai/auto", api_base=demo.base + "/v1", api_key="none", messages=FRANCE,
        max_tokens=32, num_retries=0).choices[0].message.content or "")


def test_embeddings_on_the_demo_embedding_tier_by_name_and_by_auto(demo: Server) -> None:
    dim = read_gguf_info(demo_files(demo_stack(), Settings.read().cache_dir)["embed"]).embedding_length
    for model in ("embed", "auto", "embeddings"):
        raw = oai(demo).embeddings.with_raw_response.create(model=model, input=["hello", "world"])
        result = raw.parse()
        assert [len(row.embedding) for row in result.data] == [dim, dim]
        assert raw.headers["x-llmstack-tier"] == "embed" and result.model == "embed"


def test_rerank_on_the_demo_rerank_tier_by_name_and_by_auto(demo: Server) -> None:
    for model in ("rerank", "auto", "reranker"):
        resp = httpx.post(demo.base + "/v1/rerank", timeout=60, json={
            "model": model, "query": "greeting", "documents": ["hello", "tax law", "hi"]})
        assert resp.status_code == 200 and resp.headers["x-llmstack-tier"] == "rerank"
        assert sorted(r["index"] for r in resp.json()["results"]) == [0, 1, 2]
        assert resp.json()["model"] == "rerank"


def test_a_prompt_beyond_every_window_is_a_context_window_error_to_every_client(demo: Server) -> None:
    import anthropic
    import openai

    prepare_for_litellm()  # litellm reads its cost map locally, set before its import
    import litellm

    messages = [{"role": "user", "content": TOO_LONG}]
    chat_before = refusals(demo, "/v1/chat/completions", "auto")
    messages_before = refusals(demo, "/v1/messages", "auto")
    with pytest.raises(openai.BadRequestError) as oai_error:
        oai(demo).chat.completions.create(model="auto", messages=messages)  # type: ignore[arg-type]
    assert oai_error.value.code == "context_length_exceeded"
    assert int(oai_error.value.response.headers["x-llmstack-tokens"]) > 8192
    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(model="openai/auto", api_base=demo.base + "/v1", api_key="none",
                           messages=messages, num_retries=0)
    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(model="anthropic/auto", api_base=demo.base, api_key="none",
                           messages=messages, num_retries=0, max_tokens=8)
    with pytest.raises(anthropic.BadRequestError) as claude_error:
        claude(demo).messages.create(model="auto", max_tokens=8, messages=messages)  # type: ignore[arg-type]
    assert claude_error.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": claude_error.value.body["error"]["message"]}}
    assert "prompt is too long" in claude_error.value.body["error"]["message"]
    # the router's own refusals are counted like any answer: two per endpoint, as "auto"
    assert refusals(demo, "/v1/chat/completions", "auto") - chat_before == 2
    assert refusals(demo, "/v1/messages", "auto") - messages_before == 2


def test_an_image_on_a_text_tier_is_a_client_error_not_a_retryable_500(demo: Server) -> None:
    import anthropic
    import openai

    pixel = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
             "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
    image = [{"role": "user", "content": [{"type": "text", "text": "what is this"},
                                          {"type": "image_url", "image_url": {"url": pixel}}]}]
    chat_before, messages_before = refusals(demo, CHAT_PATH), refusals(demo, "/v1/messages")
    for model in ("auto", "plan"):
        with pytest.raises(openai.BadRequestError) as error:
            oai(demo).chat.completions.create(model=model, messages=image, max_tokens=4)  # type: ignore[arg-type]
        assert error.value.type == "invalid_request_error" and "cannot take" in str(error.value)
    with pytest.raises(anthropic.BadRequestError):
        claude(demo).messages.create(model="auto", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": pixel.split(",", 1)[1]}}]}])
    # held-back upstream answers, refused to the client: metered too (they were not before)
    assert refusals(demo, CHAT_PATH) - chat_before == 2
    assert refusals(demo, "/v1/messages") - messages_before == 1


def test_anthropic_endpoints_answer_errors_in_anthropics_shape(demo: Server) -> None:
    import anthropic

    with pytest.raises(anthropic.NotFoundError) as error:
        claude(demo).messages.create(model="no-such-tier", max_tokens=4, messages=HELLO)
    assert error.value.body["type"] == "error"  # type: ignore[index]
    assert error.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_models_show_role_context_and_output_limit_and_each_has_its_own_url(demo: Server) -> None:
    import openai

    rows = {m.id: m for m in oai(demo).models.list()}
    assert rows["embed"].role == "embed"  # type: ignore[attr-defined]
    one = json.loads(demo.get("/v1/models/fast")[2])
    assert (one["role"], one["context_length"], one["max_output_tokens"]) == ("fast", 8192, 64)
    assert oai(demo).models.retrieve("small").tier == "fast"  # type: ignore[attr-defined]
    assert demo.get("/v1/models/auto")[0] == 200
    with pytest.raises(openai.NotFoundError):
        oai(demo).models.retrieve("nope")
