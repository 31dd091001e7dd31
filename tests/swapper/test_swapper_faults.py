"""The standalone swapper (``python -m swapper``) under faults, with the fake upstream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import aiohttp

from tests.conftest import fake_cmd, pid_alive, wait_until

CHAT = "/v1/chat/completions"


def events(server, kind: str) -> list[dict]:
    return [e for e in json.loads(server.get("/events")[2]) if e["kind"] == kind]


def test_unknown_model_and_bad_json_are_openai_errors(swapper) -> None:
    server = swapper(f"models:\n  m:\n    cmd: {fake_cmd()}\n")
    status, _, body = server.post(CHAT, {"model": "nope", "messages": []})
    assert status == 404
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = server.post(CHAT, "not an object")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_cmd_that_exits_at_once_answers_its_last_log_lines(swapper) -> None:
    server = swapper(f"models:\n  broken:\n    cmd: {fake_cmd('--exit-at-start')}\n")
    started = time.monotonic()
    status, _, body = server.post(CHAT, {"model": "broken", "messages": []}, timeout=20)
    assert time.monotonic() - started < 10
    assert status == 502
    error = json.loads(body)["error"]
    assert "exited with code 3" in error["message"]
    assert "failed to load model 'fake.gguf'" in error["message"]


async def _stream(base: str, model: str, on_first_chunk=None) -> tuple[int, list[bytes]]:
    chunks: list[bytes] = []
    async with aiohttp.ClientSession() as session, \
            session.post(base + CHAT, json={"model": model, "stream": True, "messages": []}) as resp:
            async for chunk in resp.content.iter_any():
                if not chunks and on_first_chunk is not None:
                    on_first_chunk()
                chunks.append(chunk)
            return resp.status, chunks


def test_child_killed_mid_stream_ends_with_error_event_then_restarts(swapper) -> None:
    server = swapper(f"models:\n  slow:\n    cmd: {fake_cmd('--chunks', '400', '--chunk-ms', '5')}\n")
    assert server.post(CHAT, {"model": "slow", "messages": []})[0] == 200
    pid = server.running()["slow"]["pid"]
    status, chunks = asyncio.run(_stream(server.base, "slow", lambda: os.kill(pid, signal.SIGKILL)))
    text = b"".join(chunks)
    assert status == 200
    assert b'"error"' in text.rsplit(b"\n\n", 2)[-2]  # the last event is an error, not [DONE]
    assert b"[DONE]" not in text
    wait_until(lambda: "slow" not in server.running(), 5, "the dead child to be noticed")
    assert server.post(CHAT, {"model": "slow", "messages": []})[0] == 200
    assert server.running()["slow"]["pid"] != pid


def test_client_disconnect_reaches_the_upstream_within_a_second(swapper) -> None:
    server = swapper(f"models:\n  slow:\n    cmd: {fake_cmd('--chunks', '2000', '--chunk-ms', '5')}\n")

    async def read_then_leave() -> float:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(server.base + CHAT,
                                      json={"model": "slow", "stream": True, "messages": []})
            seen = b""
            while b"data: " not in seen:  # past the keep-alives sent while the model loads
                seen += await resp.content.readany()
            resp.close()
            return time.time()

    left_at = asyncio.run(read_then_leave())

    def upstream_saw_it() -> bool:
        return "client disconnected at" in server.get("/logs")[2].decode()

    wait_until(upstream_saw_it, 5, "the upstream to log the disconnect")
    line = next(line for line in server.get("/logs")[2].decode().splitlines()
                if "client disconnected at" in line)
    assert float(line.rsplit(" ", 1)[1]) - left_at < 1.0


def test_twenty_concurrent_requests_for_a_cold_model_start_one_process(swapper) -> None:
    server = swapper(f"models:\n  cold:\n    cmd: {fake_cmd('--load-ms', '300')}\n"
                     f"    concurrencyLimit: 20\n")

    async def burst() -> list[int]:
        async with aiohttp.ClientSession() as session:
            async def one() -> int:
                async with session.post(server.base + CHAT, json={"model": "cold", "messages": []}) as r:
                    await r.read()
                    return r.status
            return await asyncio.gather(*(one() for _ in range(20)))

    assert asyncio.run(burst()) == [200] * 20
    assert len(events(server, "model_starting")) == 1


def test_request_racing_a_ttl_unload_never_hangs(swapper) -> None:
    """llama-swap #946: a request arriving during a TTL stop must start the model again."""
    # the child ignores SIGTERM, so it stays "stopping" until SIGKILL after unloadTimeout:
    # 3 s leaves a loaded machine ample time to observe that window
    server = swapper(f"models:\n  m:\n    cmd: {fake_cmd('--ignore-term')}\n    ttl: 1\n"
                     f"    unloadTimeout: 3\n")
    assert server.post(CHAT, {"model": "m", "messages": []})[0] == 200
    wait_until(lambda: events(server, "ttl_expired"), 10, "the TTL to expire")
    assert server.running()["m"]["state"] == "stopping"
    status, _, _ = server.post(CHAT, {"model": "m", "messages": []}, timeout=15)
    assert status == 200
    assert len(events(server, "model_starting")) == 2


def test_stop_escalates_to_sigkill_after_unload_timeout(swapper) -> None:
    server = swapper(f"models:\n  stubborn:\n    cmd: {fake_cmd('--ignore-term')}\n    unloadTimeout: 1\n")
    assert server.post(CHAT, {"model": "stubborn", "messages": []})[0] == 200
    pid = server.running()["stubborn"]["pid"]
    status, _, body = server.post("/unload/stubborn")
    assert status == 200 and json.loads(body) == {"unloaded": ["stubborn"]}
    assert not pid_alive(pid)


def test_use_model_name_and_filters_rewrite_the_forwarded_body(swapper) -> None:
    server = swapper(f"models:\n  m:\n    cmd: {fake_cmd()}\n    useModelName: upstream-name\n"
                     "    filters:\n      stripParams: temperature, top_p\n"
                     "      setParams: {top_k: 7}\n")
    status, _, body = server.post(CHAT, {"model": "m", "temperature": 2, "top_p": 0.1,
                                         "seed": 3, "messages": []})
    assert status == 200
    assert json.loads(body)["received"] == {"model": "upstream-name", "seed": 3, "top_k": 7}


def test_a_load_outlasting_the_wait_bound_answers_503_with_retry_after(swapper) -> None:
    server = swapper(f"loadWaitTimeout: 0.3\nmodels:\n  slow:\n    cmd: {fake_cmd('--load-ms', '1500')}\n")
    status, headers, body = server.post(CHAT, {"model": "slow", "messages": []})
    assert status == 503 and headers["retry-after"] == "5"
    assert json.loads(body)["error"]["code"] == "model_loading"
    wait_until(lambda: server.running().get("slow", {}).get("state") == "ready", 10,
               "the load to carry on without its waiter")
    assert server.post(CHAT, {"model": "slow", "messages": []})[0] == 200
    assert len(events(server, "model_starting")) == 1


def test_log_stream_follows_a_model(swapper) -> None:
    server = swapper(f"models:\n  m:\n    cmd: {fake_cmd()}\n")
    assert server.post(CHAT, {"model": "m", "messages": []})[0] == 200

    async def first_lines() -> bytes:
        async with aiohttp.ClientSession() as session, \
                session.get(server.base + "/logs/stream/m") as resp:
            assert resp.status == 200
            return await resp.content.readuntil(b"listening")

    assert asyncio.run(first_lines()).endswith(b"server is listening")
