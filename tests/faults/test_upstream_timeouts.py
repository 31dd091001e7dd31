"""Upstream timeouts: per model, from YAML or models.ini; 504 before the headers, an SSE
error event after them; the upstream connection closed and the slot freed."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest

from llmstack.config.ini import ModelsIniError, parse_stack
from llmstack.models.hf_cache import HubCache
from llmstack.serving.swapper_config import build_swapper_config
from llmstack.settings import Settings
from swapper.config import ConfigError, Timeouts
from swapper.upstream import UpstreamPool, UpstreamTimeout
from swapper.yaml_config import parse_yaml_config
from tests.conftest import stop_server, wait_until
from tests.hostile_upstream import HostileUpstream, exchange, hostile_cmd, http_request, start_swapper

HUB = HubCache(Settings.read().hub_cache)

# --------------------------------------------------------------------------- the client


async def _request(port: int, behaviour: str, timeouts: Timeouts):
    return await UpstreamPool().request("POST", "127.0.0.1", port, f"/hostile/{behaviour}", [],
                                        b"{}", timeouts)


@pytest.mark.parametrize("behaviour", ["hang", "slow-headers"])
async def test_no_response_headers_within_the_response_timeout(behaviour: str) -> None:
    """Absolute: a header dripping in every 0.2 s does not push it back."""
    async with HostileUpstream() as up:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"no response headers within 0\.5 s"):
            await _request(up.port, behaviour, Timeouts(response=0.5))
        assert 0.5 <= time.monotonic() - started < 1.5


async def test_a_stalled_body_fails_within_the_idle_timeout() -> None:
    async with HostileUpstream() as up:
        resp = await _request(up.port, "stall-sse", Timeouts(idle=0.5))
        assert b"first" in await resp.next_chunk()
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"no body bytes within 0\.5 s"):
            await resp.next_chunk()
        assert time.monotonic() - started < 1.5
        resp.close()


async def test_zero_means_no_timeout() -> None:
    async with HostileUpstream() as up:
        with pytest.raises(asyncio.TimeoutError):  # ours, not the client's
            await asyncio.wait_for(_request(up.port, "hang", Timeouts(0, 0, 0)), 0.3)


async def test_the_response_timeout_outlasts_a_shorter_idle_one() -> None:
    """One timer serves both limits: set at the shorter, it is moved on, never fired early."""
    async with HostileUpstream() as up:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"no response headers within 0\.6 s"):
            await _request(up.port, "hang", Timeouts(response=0.6, idle=0.2))
        assert 0.6 <= time.monotonic() - started < 1.6


async def test_an_idle_limit_alone_waits_for_the_headers_then_applies() -> None:
    async with HostileUpstream() as up:
        with pytest.raises(asyncio.TimeoutError):  # no response limit: ours fires first
            await asyncio.wait_for(_request(up.port, "hang", Timeouts(response=0, idle=0.2)), 0.7)
        resp = await _request(up.port, "stall-sse", Timeouts(response=0, idle=0.4))
        assert b"first" in await resp.next_chunk()
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"no body bytes within 0\.4 s"):
            await resp.next_chunk()
        assert 0.4 <= time.monotonic() - started < 1.4
        resp.close()


@pytest.fixture
def unreachable_port() -> Iterator[int]:
    """A listener whose accept queue is full: a further connect hangs (SYNs are dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port))
    yield port
    queued.close()
    listener.close()


async def test_a_connect_that_hangs_fails_within_the_connect_timeout(unreachable_port: int
                                                                     ) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=r"cannot connect to 127\.0\.0\.1:.* within 0\.3 s"):
        await _request(unreachable_port, "hang", Timeouts(connect=0.3))
    assert 0.3 <= time.monotonic() - started < 1.3
    assert not asyncio.current_task().cancelling()  # the deadline's cancel was withdrawn


async def test_a_cancel_during_a_connect_stays_a_cancel(unreachable_port: int) -> None:
    request = asyncio.ensure_future(_request(unreachable_port, "hang", Timeouts(connect=5)))
    asyncio.get_running_loop().call_later(0.2, request.cancel)
    with pytest.raises(asyncio.CancelledError):
        await request


async def test_a_slow_reader_is_not_an_idle_upstream() -> None:
    """Reading paused by our own backpressure never counts as the upstream going quiet."""
    async with HostileUpstream() as up:
        resp = await _request(up.port, "big-sse", Timeouts(idle=0.3))
        total = len(await resp.next_chunk())
        await asyncio.sleep(0.6)  # the scenario: a client slower than the idle timeout
        while (chunk := await resp.next_chunk()) is not None:
            total += len(chunk)
        assert total >= 8 << 20
        resp.close()


# --------------------------------------------------------------------------- config


def test_yaml_timeouts_block() -> None:
    config = parse_yaml_config(dedent("""\
        models:
          m:
            cmd: server --port ${PORT}
            timeouts: {connect: 5, responseHeader: 0, bodyIdle: 20, keepalive: 30}
          d:
            cmd: server --port ${PORT}
        """))
    assert config.models["m"].timeouts == Timeouts(connect=5, response=0, idle=20)
    assert config.models["d"].timeouts == Timeouts()
    assert config.extra["unsupported"] == ["models.m.timeouts.keepalive: not supported, ignored"]


@pytest.mark.parametrize("value", ["-1", "soon", "{connect: [1]}"])
def test_bad_yaml_timeouts_name_the_line(value: str) -> None:
    text = f"models:\n  m:\n    cmd: server --port ${{PORT}}\n    timeouts: {{bodyIdle: {value}}}\n"
    if value.startswith("{"):
        text = f"models:\n  m:\n    cmd: server --port ${{PORT}}\n    timeouts: {value}\n"
    with pytest.raises(ConfigError, match=r"<config>:4: models\.m\.timeouts"):
        parse_yaml_config(text)


MODELS_INI = """\
[DEFAULT]
response_timeout = 1200
idle_timeout     = 90

[a]
hf_repo = org/a
hf_file = a.gguf

[b]
hf_repo = org/b
hf_file = b.gguf
response_timeout = 0
idle_timeout = 600
"""


def test_models_ini_timeouts_default_and_per_tier() -> None:
    stack = parse_stack(MODELS_INI, "t.ini")
    config = build_swapper_config(stack, "/bin/llama-server", {}, HUB)
    assert config.models["a"].timeouts == Timeouts(response=1200, idle=90)
    assert config.models["b"].timeouts == Timeouts(response=0, idle=600)
    default = build_swapper_config(parse_stack("[a]\nhf_repo = o/a\nhf_file = a.gguf\n"), "s", {}, HUB)
    assert default.models["a"].timeouts == Timeouts()


def test_bad_models_ini_timeouts_name_file_and_line() -> None:
    text = MODELS_INI.replace("idle_timeout     = 90", "idle_timeout     = soon").replace(
        "response_timeout = 0", "response_timeout = -5")
    with pytest.raises(ModelsIniError) as info:
        parse_stack(text, "t.ini")
    assert str(info.value).splitlines() == [
        "t.ini:3: [DEFAULT] idle_timeout: 'soon': expected a whole number of seconds such as 300",
        "t.ini:12: [b] response_timeout: '-5': expected a whole number of seconds such as 900",
    ]


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("timeouts")
    server, port = start_swapper(
        f"models:\n  h:\n    cmd: {hostile_cmd()}\n"
        "    timeouts: {responseHeader: 1, bodyIdle: 1}\n", tmp)
    yield port
    stop_server(server)


def _chat(port: int, behaviour: str, stream: bool = False):
    body = json.dumps({"model": "h", "stream": stream, "messages": []}).encode()
    return exchange(port, http_request("POST", "/v1/chat/completions",
                                       {"x-hostile": behaviour, "content-type": "application/json"},
                                       body), timeout=30)


def _running(port: int) -> dict:
    reply = exchange(port, http_request("GET", "/running"))
    return {row["model"]: row for row in reply.json()["running"]}


def _connections_to(port: int) -> int:
    """Established IPv4 TCP connections whose remote end is ``port`` (from /proc/net/tcp)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows
               if row.split()[3] == "01" and int(row.split()[2].split(":")[1], 16) == port)


def _loaded(port: int) -> int:
    """Load the model with a stream (which leaves no pooled connection); its port."""
    assert _chat(port, "chat", stream=True).status == 200
    upstream = _running(port)["h"]["port"]
    wait_until(lambda: _connections_to(upstream) == 0, 5, "no connection to the upstream")
    return upstream


def test_an_upstream_that_never_answers_gets_a_504_within_the_timeout(stack: int) -> None:
    upstream = _loaded(stack)
    started = time.monotonic()
    reply = _chat(stack, "hang")
    assert time.monotonic() - started < 2.0  # responseHeader 1 s, plus 1 s
    assert reply.status == 504
    assert reply.json()["error"]["type"] == "timeout_error"
    assert "no response headers within 1 s" in reply.json()["error"]["message"]
    wait_until(lambda: _connections_to(upstream) == 0, 5, "the upstream connection to close")
    assert _running(stack)["h"]["in_flight"] == 0


def test_a_stalled_stream_gets_an_error_event_within_the_idle_timeout(stack: int) -> None:
    upstream = _loaded(stack)
    started = time.monotonic()
    reply = _chat(stack, "stall-sse", stream=True)
    assert time.monotonic() - started < 2.0  # bodyIdle 1 s, plus 1 s
    assert reply.status == 200 and reply.complete
    events = reply.body.strip().split(b"\n\n")
    assert b"first" in events[0]
    error = json.loads(events[-1].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_timeout" and "no body bytes within 1 s" in error["message"]
    wait_until(lambda: _connections_to(upstream) == 0, 5, "the upstream connection to close")
    assert _running(stack)["h"]["in_flight"] == 0
    assert _chat(stack, "chat").status == 200  # the slot is free
