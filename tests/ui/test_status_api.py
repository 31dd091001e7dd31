"""/metrics, /api/state, /api/events and loading progress, through a real `python -m swapper`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Server, fake_cmd, wait_until
from tests.ui.conftest import CHAT, LOAD_MS, post, scrape, slow_config, sse_data

Swapper = Callable[..., Server]
HI = [{"role": "user", "content": "hi"}]


def requests_total(samples: dict, model: str, status: str) -> float:
    key = ("swapper_requests_total",
           (("endpoint", CHAT), ("model", model), ("status", status)))
    return samples.get(key, 0.0)


def test_metrics_counters_move_by_exactly_the_requests_sent(swapper: Swapper) -> None:
    server = swapper(slow_config(extra=f"  other:\n    cmd: {fake_cmd('--chunks', '2')}\n"
                                       "    concurrencyLimit: 1\n"))
    before = scrape(server)
    for _ in range(3):
        assert server.post(CHAT, {"model": "quick", "messages": HI})[0] == 200
    stream = {"model": "other", "stream": True, "stream_options": {"include_usage": True},
              "messages": HI}
    for _ in range(2):
        assert server.post(CHAT, stream)[0] == 200
    assert server.post(CHAT, {"model": "nope", "messages": HI})[0] == 404
    after = scrape(server)
    assert requests_total(after, "quick", "200") - requests_total(before, "quick", "200") == 3
    assert requests_total(after, "other", "200") - requests_total(before, "other", "200") == 2
    assert requests_total(after, "-", "404") - requests_total(before, "-", "404") == 1
    assert requests_total(after, "slow", "200") == 0
    # tokens from usage, streamed (2 x 2 chunks) and not (3 x 3)
    assert after[("swapper_generated_tokens_total", (("model", "other"),))] == 4
    assert after[("swapper_generated_tokens_total", (("model", "quick"),))] == 9
    assert after[("swapper_request_duration_seconds_count", (("model", "quick"),))] == 3
    assert after[("swapper_time_to_first_byte_seconds_count", (("model", "other"),))] == 2
    assert after[("swapper_swaps_total", (("model", "quick"), ("result", "ready")))] == 1
    # one model at a time (no matrix): other's load evicted quick
    assert after[("swapper_swaps_total", (("model", "other"), ("result", "ready")))] == 1
    assert after[("swapper_model_resident", (("model", "other"),))] == 1
    assert after[("swapper_model_resident", (("model", "quick"),))] == 0
    assert after[("swapper_requests_queued", (("model", "quick"),))] == 0


def test_a_cold_streaming_request_gets_bytes_at_once_and_the_whole_answer(
        swapper: Swapper) -> None:
    server = swapper(slow_config())
    sent = time.perf_counter()
    resp = post(server.base, CHAT, {"model": "slow", "stream": True, "messages": HI})
    first = resp.read1(65536)
    first_at = time.perf_counter() - sent
    assert resp.status == 200 and resp.getheader("content-type") == "text/event-stream"
    assert first.startswith(b": loading slow"), first
    assert first_at < 0.1, f"first bytes after {first_at * 1000:.0f} ms"
    rest = first + resp.read()
    done_at = time.perf_counter() - sent
    assert done_at >= LOAD_MS / 1000
    events = sse_data(rest)
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                      if isinstance(e, dict) and e.get("choices"))
    assert content == "tok " * 5 and rest.rstrip().endswith(b"data: [DONE]")
    assert rest.count(b": loading slow") >= 2  # kept alive while it loaded
    assert not any("reasoning_content" in e["choices"][0]["delta"] for e in events
                   if isinstance(e, dict))  # progress text is off by default
    # a request for a ready model is not touched
    warm = post(server.base, CHAT, {"model": "slow", "stream": True, "messages": HI}).read()
    assert b": loading" not in warm and warm.startswith(b"data: ")


def test_send_loading_state_shows_progress_in_reasoning_content(swapper: Swapper) -> None:
    server = swapper(slow_config(send_loading_state=True))
    events = sse_data(post(server.base, CHAT, {"model": "slow", "stream": True,
                                               "messages": HI}).read())
    reasoning = [e["choices"][0]["delta"]["reasoning_content"] for e in events
                 if isinstance(e, dict) and "reasoning_content" in e["choices"][0]["delta"]]
    assert reasoning[0] == "Loading model slow…\n"
    assert any(r.startswith("still loading (") for r in reasoning[1:])
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "tok " * 5


def test_the_openai_sdk_streams_through_a_cold_load(swapper: Swapper) -> None:
    import openai

    server = swapper(slow_config(send_loading_state=True))
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0,
                           timeout=httpx.Timeout(30, read=2.0))  # read timeout < the 3 s load
    started = time.perf_counter()
    stream = client.chat.completions.create(model="slow", messages=HI, stream=True)
    text, reasoning = "", ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        text += delta.content or ""
        reasoning += getattr(delta, "reasoning_content", None) or ""
    assert time.perf_counter() - started >= LOAD_MS / 1000
    assert text == "tok " * 5 and reasoning.startswith("Loading model slow")


def test_a_failed_load_ends_the_early_stream_with_an_error_event(swapper: Swapper) -> None:
    server = swapper(f"models:\n  broken:\n    cmd: {fake_cmd('--exit-at-start')}\n")
    resp = post(server.base, CHAT, {"model": "broken", "stream": True, "messages": HI})
    body = resp.read()
    assert resp.status == 200 and body.startswith(b": loading broken")
    errors = [e for e in sse_data(body) if isinstance(e, dict) and "error" in e]
    assert errors and "failed to load model" in errors[0]["error"]["message"]
    assert b"[DONE]" not in body
    raw = server.get("/api/state")[2]
    broken = json.loads(raw)["models"][0]
    assert broken["state"] == "failed" and "failed to load model" in broken["failure"]


def test_a_non_streaming_request_simply_waits(swapper: Swapper) -> None:
    server = swapper(slow_config())
    status, headers, body = server.post(CHAT, {"model": "slow", "messages": HI})
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["choices"][0]["message"]["content"] == "tok " * 5


def read_events(resp: httpx.Response, until: Callable[[list[dict]], bool],
                timeout: float = 15) -> list[dict]:
    """SSE payloads from /api/events until ``until`` holds (read on a thread, bounded)."""
    seen: list[dict] = []
    done = threading.Event()

    def pump() -> None:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if until(seen):
                    break
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    assert done.wait(timeout), f"events so far: {[e['kind'] for e in seen]}"
    return seen


def test_api_events_streams_a_snapshot_then_state_changes_decisions_and_logs(
        swapper: Swapper) -> None:
    server = swapper(slow_config())
    with httpx.stream("GET", server.base + "/api/events", timeout=30) as resp:
        assert resp.headers["content-type"] == "text/event-stream"
        assert server.post("/api/models/load/quick")[0] == 202

        def kinds(events: list[dict]) -> list[str]:
            return [e["kind"] for e in events]

        events = read_events(resp, lambda seen: "model_ready" in kinds(seen)
                             and any(e["kind"] == "log" and "listening" in e["line"]
                                     for e in seen))
        assert events[0]["kind"] == "snapshot"
        assert [m["state"] for m in events[0]["models"]] == ["stopped", "stopped"]
        assert kinds(events).index("model_starting") < kinds(events).index("model_ready")
    state = json.loads(server.get("/api/state")[2])
    quick = next(m for m in state["models"] if m["model"] == "quick")
    assert quick["state"] == "ready" and quick["pid"] and quick["last_load_ms"] is not None
    assert any("listening" in line for line in quick["log"])
    assert state["swaps"][-1]["model"] == "quick" and state["swaps"][-1]["result"] == "ready"
    server.post(CHAT, {"model": "quick", "messages": HI})
    decision = json.loads(server.get("/api/state")[2])["decisions"][-1]
    assert decision["model"] == "quick" and decision["status"] == 200
    assert decision["tokens"] == 3 and decision["ms"] >= decision["ttft_ms"] >= 0


def test_upstream_pass_throughs_are_not_routing_decisions(swapper: Swapper) -> None:
    """``/upstream/<model>/tokenize`` (or ``/health``, ``/props``) calls a model's own API: it
    is metered, but once it filled the page's and ``status``'s "routing decisions"."""
    server = swapper(slow_config())
    assert server.post(CHAT, {"model": "quick", "messages": HI})[0] == 200
    server.post("/upstream/quick/tokenize", {"content": "hi"})
    assert server.get("/upstream/quick/health")[0] == 200
    decisions = json.loads(server.get("/api/state")[2])["decisions"]
    assert [(d["model"], d["path"]) for d in decisions] == [("quick", CHAT)]
    done = [e for e in json.loads(server.get("/events")[2]) if e["kind"] == "request_done"]
    assert [e["path"] for e in done] == [CHAT, "/tokenize", "/health"]  # still recorded
    assert all(e.get("via") == "upstream" for e in done[1:])


def test_with_api_keys_the_page_is_public_and_the_data_needs_the_key(swapper: Swapper) -> None:
    server = swapper(slow_config(extra="apiKeys: [sekrit]\n"))
    status, _, page = server.get("/ui")
    assert status == 200 and b"<title>llmstack status</title>" in page
    assert server.get("/ui/app.js")[0] == 200
    for path in ("/api/state", "/api/events", "/metrics"):
        assert server.get(path)[0] == 401, path
    auth = {"authorization": "Bearer sekrit"}
    assert httpx.get(server.base + "/api/state", headers=auth).status_code == 200
    with httpx.stream("GET", server.base + "/api/events", headers=auth, timeout=10) as resp:
        assert resp.status_code == 200
        assert read_events(resp, lambda seen: True)[0]["kind"] == "snapshot"


@pytest.mark.parametrize("path", ["/api/models/load/nope"])
def test_loading_an_unknown_model_is_a_404(swapper: Swapper, path: str) -> None:
    assert swapper(slow_config()).post(path)[0] == 404


def test_a_client_leaving_during_the_load_frees_its_place_and_the_load_carries_on(
        swapper: Swapper) -> None:
    server = swapper(slow_config())
    resp = post(server.base, CHAT, {"model": "slow", "stream": True, "messages": HI})
    assert resp.read1(65536).startswith(b": loading slow")

    def slow() -> dict:
        return next(m for m in json.loads(server.get("/api/state")[2])["models"]
                    if m["model"] == "slow")

    wait_until(lambda: slow()["queued"] == 1, 5, "the request waiting for the load")
    resp.close()
    wait_until(lambda: slow()["queued"] == 0, 5, "the waiter to be cancelled")
    wait_until(lambda: slow()["state"] == "ready", 15, "the load to finish anyway")
    done = [e for e in json.loads(server.get("/events")[2]) if e["kind"] == "request_done"]
    assert [d["status"] for d in done] == [499]


def test_a_refused_streaming_request_keeps_its_status(swapper: Swapper) -> None:
    server = swapper(slow_config().replace("  quick:", "    concurrencyLimit: 1\n  quick:"))
    first = post(server.base, CHAT, {"model": "slow", "stream": True, "messages": HI})
    assert first.read1(65536).startswith(b": loading slow")  # it waits for the load
    second = post(server.base, CHAT, {"model": "slow", "stream": True, "messages": HI})
    assert second.status == 429 and second.getheader("retry-after") == "1"
    assert json.loads(second.read())["error"]["type"] == "rate_limit_error"
    assert post(server.base, CHAT, {"model": "nope", "stream": True, "messages": HI}).status == 404
    assert b"data: [DONE]" in first.read()
