"""A tier spanning three real ``llmstack serve`` machines (each its own process, on the tiny
stack: a test of routing and processes, where the answers do not matter).

The front ``llmstack serve`` lists them as ``backends`` of its fast tier, so litellm's
Router spreads requests (least-busy), pins a session id to one machine, and keeps
answering when one machine dies mid-run. Which machine answered is the
``x-llmstack-backend`` header.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import (
    TINY_STACK_INI,
    Server,
    pid_alive,
    start_llmstack,
    stop_server,
    tiny_stack,
    wait_until,
)
from tests.hosted.conftest import needs_litellm, post, sse_events

pytestmark = pytest.mark.real
CHAT = "/v1/chat/completions"
WORKERS = 15
"""Concurrent clients: least-busy spreads by requests in flight, so it needs some."""


@pytest.fixture
def machines(tmp_path: Path, llama_server_bin: str) -> Iterator[list[Server]]:
    """Three tiny stacks, their fast tier loaded; stopped (with any orphaned child) after."""
    needs_litellm()
    started: list[Server] = []
    env = {"LLMSTACK_LLAMA_SERVER": llama_server_bin, **tiny_stack(tmp_path / "hub")}
    try:
        for index in range(3):
            server = start_llmstack(tmp_path / f"machine{index}.log", "--models-ini",
                                    str(TINY_STACK_INI), env=env)
            started.append(server)
        for server in started:
            wait_until(lambda s=server: s.running().get("fast", {}).get("state") == "ready", 60,
                       "the fast tier to preload")
        yield started
    finally:
        children = []
        for server in started:
            if server.popen.poll() is None:
                children += [row["pid"] for row in server.running().values()]
            stop_server(server)
        for pid in children:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def ask(front: Server, session: str = "") -> tuple[int, str]:
    """One streamed request: (status, the machine that answered); a stream that did not end
    in ``[DONE]`` (an in-band error event) counts as status 502."""
    status, headers, body = post(front.base, CHAT, {
        "model": "fast", "max_tokens": 2, "stream": True,
        "messages": [{"role": "user", "content": "hi"}]},
        {"x-session-id": session} if session else {}, timeout=60)
    complete = status == 200 and sse_events(body)[-1:] == [b"[DONE]"]
    return status if complete or status != 200 else 502, headers.get("x-llmstack-backend", "")


def test_a_tier_spans_three_machines(machines: list[Server], serve_ini) -> None:
    urls = [m.base for m in machines]
    front = serve_ini(f"[fast]\nrole = fast\nbackends = {', '.join(urls)}\n")

    rows = {r["id"]: r for r in json.loads(front.get("/v1/models")[2])["data"]}
    assert [(b["url"], b["healthy"]) for b in rows["fast"]["backends"]] == [(u, True) for u in urls]

    with ThreadPoolExecutor(WORKERS) as pool:  # spread: 300 requests, no session id
        answers = list(pool.map(lambda _: ask(front), range(300)))
    assert {status for status, _ in answers} == {200}
    shares = Counter(url for _, url in answers)
    assert set(shares) == set(urls), shares
    assert all(85 <= n <= 115 for n in shares.values()), shares

    for session in ("session-a", "session-b", "session-c"):  # affinity while healthy
        homes = {ask(front, session) for _ in range(8)}
        assert len(homes) == 1 and next(iter(homes))[0] == 200, homes

    # kill one machine mid-run: only requests in flight at that moment may fail
    victim = machines[2]
    victim_children = [row["pid"] for row in victim.running().values()]
    lock = threading.Lock()
    state = {"started": 0, "done": 0, "in_flight_at_kill": -1}
    late: list[tuple[int, str]] = []
    early: list[tuple[int, str]] = []

    def one(_: int) -> None:
        with lock:
            state["started"] += 1
            after_kill = state["in_flight_at_kill"] >= 0
        answer = ask(front)
        with lock:
            state["done"] += 1
            (late if after_kill else early).append(answer)
            if state["done"] == 40 and state["in_flight_at_kill"] < 0:
                state["in_flight_at_kill"] = state["started"] - state["done"]
                victim.popen.send_signal(signal.SIGKILL)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, range(160)))
    for pid in victim_children:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    failures = [a for a in early + late if a[0] != 200]
    assert len(failures) <= state["in_flight_at_kill"], (failures, state)
    assert late and all(status == 200 and url != victim.base for status, url in late)
    rows = {r["id"]: r for r in json.loads(front.get("/v1/models")[2])["data"]}
    assert {b["url"]: b["healthy"] for b in rows["fast"]["backends"]} == {
        urls[0]: True, urls[1]: True, urls[2]: False}
