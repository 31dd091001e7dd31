"""Time limits on the tiers litellm serves, against ``llmstack serve`` and loopback peers.

Backends and a hosted ``api_base`` that accept a connection and never answer (raw
listening sockets), ports that refuse, and the provider fake pausing a stream: every
request ends within ``response_timeout`` (5 s here) + 2 s, as a 504 ``timeout_error``
(Anthropic's shape on /v1/messages), a 503 with ``Retry-After`` naming the backends when
none answers, or, once a stream started, the protocol's error event.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Server, free_port, wait_until
from tests.hosted.conftest import Provider, needs_litellm, post, sse_events

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
HI = [{"role": "user", "content": "hi"}]
RESPONSE_TIMEOUT = 5
IDLE_TIMEOUT = 2
WITHIN = RESPONSE_TIMEOUT + 2
"""Seconds every request to a hanging peer must end within."""


class Silent:
    """A loopback listener that accepts connections, reads nothing and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:  # closed
                return

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self.thread.join(5)
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module")
def silent() -> Iterator[Callable[[], str]]:
    """Factory: the URL of a new silent peer."""
    made: list[Silent] = []

    def make() -> str:
        made.append(Silent())
        return made[-1].url

    yield make
    for peer in made:
        peer.close()


def refusing() -> str:
    """A loopback URL nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def peers(silent: Callable[[], str]) -> Iterator[dict[str, list[str]]]:
    """Peers by scenario; ``unreachable``: a listener whose accept queue one connection
    fills, so the kernel drops further SYNs (as a firewall does) and connects hang."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    queued = socket.create_connection(full.getsockname())
    yield {"hang": [silent(), silent()], "mixed": [refusing(), silent()],
           "refuse": [refusing(), refusing()], "refuse1": [refusing()],
           "crowd": [silent(), silent()], "hosted": [silent()],
           "unreachable": [f"http://127.0.0.1:{full.getsockname()[1]}"]}
    queued.close()
    full.close()


@pytest.fixture(scope="module")
def stack(provider: Provider, serve_ini, peers: dict[str, list[str]]) -> Server:
    needs_litellm()
    tiers = "".join(f"[{name}{suffix}]\nbackends = {', '.join(peers[name])}\n\n"
                    for name in ("hang", "mixed") for suffix in ("-chat", "-stream", "-messages",
                                                                 "-messages-stream"))
    tiers += "".join(f"[{name}]\nbackends = {', '.join(peers[name])}\n\n"
                     for name in ("refuse", "refuse1", "crowd"))
    server = serve_ini(f"""\
[DEFAULT]
response_timeout = {RESPONSE_TIMEOUT}
idle_timeout = {IDLE_TIMEOUT}

{tiers}
[unreachable]
backends = {peers["unreachable"][0]}
response_timeout = 60

[gpt-hang]
model = openai/fake-gpt
api_base = {peers["hosted"][0]}/v1

[gpt-hang-fallback]
model = openai/fake-gpt
api_base = {peers["hosted"][0]}/v1
fallback = gpt

[claude-hang]
model = anthropic/claude-fake
api_base = {peers["hosted"][0]}

[gpt]
model = openai/fake-gpt
api_base = {provider.base}/v1

[team]
backends = {provider.base}
""", {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"})
    status, _, body = post(server.base, CHAT, {"model": "gpt", "messages": HI})
    assert status == 200, body  # litellm imported: the requests below are timed without it
    return server


def ask(stack: Server, tier: str, path: str = CHAT, stream: bool = False
        ) -> tuple[float, int, dict[str, str], bytes]:
    """(seconds taken, status, headers, body) of one request."""
    payload = {"model": tier, "messages": HI, "max_tokens": 20, "stream": stream}
    started = time.monotonic()
    status, headers, body = post(stack.base, path, payload, timeout=60)
    return time.monotonic() - started, status, headers, body


def at_once(calls: list[Callable[[], tuple[float, int, dict[str, str], bytes]]]
            ) -> list[tuple[float, int, dict[str, str], bytes]]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def timeout_error(path: str, body: bytes) -> dict:
    """The error of a 504, in the endpoint's shape."""
    answer = json.loads(body)
    if path == MESSAGES:
        assert answer["type"] == "error" and answer["error"]["type"] == "timeout_error", answer
        return dict(answer["error"])
    assert answer["error"]["type"] == "timeout_error", answer
    assert answer["error"]["code"] == "upstream_timeout", answer
    return dict(answer["error"])


CASES = [(suffix, path, stream) for suffix, path, stream in (
    ("-chat", CHAT, False), ("-stream", CHAT, True), ("-messages", MESSAGES, False),
    ("-messages-stream", MESSAGES, True))]


def test_backends_that_hang_or_one_of_each_time_out_then_cool_down(stack: Server,
                                                                    peers) -> None:
    """Silent backends: a 504, streamed or not (no stream had started). One refusing, one
    silent: the same, or (when the refusing one was tried first: litellm reports the first
    failure) a 503 naming both. A backend that timed out cools down: two requests at once
    to two silent backends (least-busy sends one to each), and the next is a 503 at once."""
    cases = [(f"{name}{suffix}", path, stream) for name in ("hang", "mixed")
             for suffix, path, stream in CASES] + [("hang-chat", CHAT, False)]
    for (took, status, headers, body), (tier, path, _) in zip(
            at_once([lambda c=case: ask(stack, *c) for case in cases]), cases, strict=True):
        assert took < WITHIN, (tier, took)
        if status == 503 and tier.startswith("mixed"):
            assert headers["retry-after"] == "30" and all(
                url in body.decode() for url in peers["mixed"]), body
            continue
        assert status == 504, (tier, status, body)
        message = timeout_error(path, body)["message"]
        assert message.startswith(f"tier '{tier}': ") and "timed out" in message, message
    took, status, headers, body = ask(stack, "hang-chat")
    assert status == 503 and took < 1, (status, took, body)
    assert headers["retry-after"] == "30"


def test_backends_that_refuse_are_a_503_naming_them(stack: Server, peers) -> None:
    for tier, path in (("refuse", CHAT), ("refuse1", CHAT), ("refuse", MESSAGES)):
        took, status, headers, body = ask(stack, tier, path)
        assert status == 503 and took < 5, (tier, path, status, took, body)
        assert headers["retry-after"] == "30"
        error = json.loads(body)["error"]
        assert all(url in error["message"] for url in peers[tier]), error
        assert error["type"] == ("overloaded_error" if path == MESSAGES else "server_error")


def test_a_hosted_api_base_that_hangs_times_out(stack: Server, provider: Provider) -> None:
    cases = [("gpt-hang", CHAT, False), ("gpt-hang", CHAT, True), ("claude-hang", CHAT, True),
             ("claude-hang", MESSAGES, False), ("claude-hang", MESSAGES, True),
             ("gpt-hang-fallback", CHAT, False)]
    results = at_once([lambda c=case: ask(stack, *c) for case in cases])
    for (took, status, _, body), (tier, path, _stream) in zip(results[:-1], cases[:-1], strict=True):
        assert status == 504 and took < WITHIN, (tier, path, status, took, body)
        timeout_error(path, body)
    took, status, _, body = results[-1]
    assert status == 200 and took < WITHIN, (status, took, body)
    assert json.loads(body)["choices"][0]["message"]["name"] == "gpt"  # the fallback answered


def test_a_backend_that_never_accepts_fails_within_the_connect_timeout(stack: Server) -> None:
    """Its tier allows 60 s for an answer; the connection is given 5 s."""
    took, status, _, body = ask(stack, "unreachable")
    assert status == 504 and took < 5 + 2, (status, took, body)
    assert "timed out" in timeout_error(CHAT, body)["message"]


def test_thirty_hanging_requests_at_once_all_end(stack: Server) -> None:
    results = at_once([lambda s=bool(i % 2): ask(stack, "crowd", CHAT, s) for i in range(30)])
    assert [status for _, status, _, _ in results] == [504] * 30
    slowest = max(took for took, _, _, _ in results)
    assert slowest < WITHIN + 1, slowest  # 30 client threads on a small machine: 1 s more
    assert stack.get("/health")[0] == 200


@pytest.mark.parametrize("tier", ["gpt", "team"])
def test_a_stream_that_stalls_ends_with_the_protocols_error_event(stack: Server,
                                                                  provider: Provider,
                                                                  tier: str) -> None:
    """The provider sends the first chunk, then pauses 30 s: the stream ends with an error
    event within idle_timeout, and the provider sees llmstack hang up. (Anthropic Messages
    streams from a multi-machine tier fail apart from this: litellm's Router wants its proxy
    package for them.)"""
    provider.mode(mode="ok", delay_ms=30_000)
    before = json.loads(provider.server.get("/_disconnects")[2])
    took, status, _, body = ask(stack, tier, CHAT, True)
    assert status == 200 and took < IDLE_TIMEOUT + 2, (status, took, body)
    events = sse_events(body)
    assert json.loads(events[0])["choices"][0]["delta"]["name"] == tier  # the stream started
    assert b"[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_timeout" and "idle_timeout" in error["message"], error
    expected = before + 1
    if tier == "gpt":
        took, status, _, body = ask(stack, tier, MESSAGES, True)
        assert status == 200 and took < IDLE_TIMEOUT + 2, (status, took, body)
        kinds = [json.loads(event)["type"] for event in sse_events(body)]
        assert kinds[0] == "message_start" and kinds[-1] == "error", kinds
        assert b"event: error" in body and "message_stop" not in kinds
        assert "idle_timeout" in json.loads(sse_events(body)[-1])["error"]["message"]
        expected += 1
    wait_until(lambda: json.loads(provider.server.get("/_disconnects")[2]) == expected, 5,
               "the provider to see llmstack hang up")
