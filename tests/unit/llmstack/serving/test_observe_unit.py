"""Units: token figures from an answer's tail, bounded reason labels, the loading switch."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from llmstack.config.ini import parse_stack
from llmstack.models.hf_cache import HubCache
from llmstack.serving.app import reason_label
from llmstack.serving.swapper_config import build_swapper_config
from llmstack.settings import Settings
from swapper.events import EventBus
from swapper.observe import Observer, RequestMeter, generated
from swapper.reply import Reply
from swapper.yaml_config import parse_yaml_config

HUB = HubCache(Settings.read().hub_cache)

LLAMA_LAST_CHUNK = (b'data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],'
                    b'"usage":{"completion_tokens":12,"prompt_tokens":5,"total_tokens":17},'
                    b'"timings":{"prompt_n":5,"predicted_n":12,"predicted_ms":40.1,'
                    b'"predicted_per_second":299.25}}\n\ndata: [DONE]\n\n')


def test_generated_reads_usage_and_timings_from_the_tail() -> None:
    assert generated(LLAMA_LAST_CHUNK) == (12, 299.25)
    assert generated(b'{"usage": {"completion_tokens": 7}}') == (7, None)
    assert generated(b"data: [DONE]\n\n") == (None, None)


def test_generated_reads_the_output_tokens_of_messages_and_responses_streams() -> None:
    """A streamed /v1/messages answer counts its tokens in message_delta's usage (its
    message_start says 0 or 1 first), a Responses answer in response.completed's."""
    messages = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
                b'{"input_tokens":9,"output_tokens":0}}}\n\nevent: message_delta\ndata: '
                b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":'
                b'{"output_tokens":8}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert generated(messages) == (8, None)
    responses = (b'event: response.completed\ndata: {"type":"response.completed","response":'
                 b'{"usage":{"input_tokens":9,"output_tokens":5,"total_tokens":14}}}\n\n')
    assert generated(responses) == (5, None)


@pytest.mark.parametrize("reason, label", [
    ("high-fidelity tokens~12<=12000", "high-fidelity"),
    ("long-context tokens~40000>32000 (user-turns=11>=10 floor)", "long-context"),
    ("ultra-trigger->agent (no ultra tier)", "ultra-trigger->agent"),
    ("long-context tokens~9000>1 -> agent (fast ctx 8192 < 9000)", "long-context+context-fit"),
    ("mid-fidelity tokens~3<=32000 (session floor agent)", "mid-fidelity+session-floor"),
    ("", "other"),
])
def test_reason_labels_drop_the_numbers(reason: str, label: str) -> None:
    assert reason_label(reason) == label


def test_the_meter_publishes_one_record_with_status_timing_and_tokens() -> None:
    bus = EventBus()
    observer = Observer(bus)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def answer() -> None:
        meter = RequestMeter(bus, "fast", "/v1/chat/completions", {"reason": "r"})
        reply = Reply(send)
        await reply.send({"type": "http.response.start", "status": 200, "headers": []})
        await reply.send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        await reply.send({"type": "http.response.body", "body": LLAMA_LAST_CHUNK,
                          "more_body": False})
        meter.finish(reply)
        meter.finish(reply, 499)  # already finished: no second record

    asyncio.run(answer())
    assert len(sent) == 3
    [record] = [e.as_dict() for e in bus.recent]
    assert record["kind"] == "request_done" and record["status"] == 200
    assert record["tokens"] == 12 and record["tps"] == 299.2 and record["reason"] == "r"
    assert record["ms"] >= record["ttft_ms"] >= 0
    assert list(observer.decisions) == [record]


def test_send_loading_state_is_switchable_per_model_in_yaml_and_models_ini() -> None:
    config = parse_yaml_config("sendLoadingState: true\nmodels:\n  a:\n    cmd: x ${PORT}\n"
                               "  b:\n    cmd: y ${PORT}\n    sendLoadingState: false\n", "c.yaml")
    assert config.models["a"].send_loading_state and not config.models["b"].send_loading_state
    off = parse_yaml_config("models:\n  a:\n    cmd: x ${PORT}\n", "c.yaml")
    assert not off.models["a"].send_loading_state
    stack = parse_stack("[fast]\nrole = fast\nhf_repo = r/x\nhf_file = f.gguf\n"
                        "send_loading_state = true\n[agent]\nrole = agent\nhf_repo = r/y\n"
                        "hf_file = g.gguf\nctx_size = 65536\n", "models.ini")
    swapper = build_swapper_config(stack, "llama-server", {"fast": None, "agent": None}, HUB)
    assert swapper.models["fast"].send_loading_state
    assert not swapper.models["agent"].send_loading_state


def test_the_observer_keeps_why_a_model_failed_and_each_swap(tmp_path: Path) -> None:
    bus = EventBus()
    observer = Observer(bus)
    bus.publish("swap_started", model="b", evict=["a"], set="b_alone", cost=3)
    bus.publish("model_stopping", model="a", reason="evicted for b")
    bus.publish("model_starting", model="b", port=1)
    bus.publish("load_failed", model="b", ms=120.0, error="model 'b' exited with code 3")
    assert observer.failed == {"b": "model 'b' exited with code 3"}
    assert observer.stop_reason == {"a": "evicted for b"}
    [swap] = observer.swaps
    assert swap["evict"] == ["a"] and swap["set"] == "b_alone" and swap["cost"] == 3
    assert swap["result"] == "failed: model 'b' exited with code 3" and swap["ms"] == 120.0
    bus.publish("model_starting", model="b", port=1)
    assert "b" not in observer.failed
    json.dumps(list(observer.swaps))  # what /api/state serialises
