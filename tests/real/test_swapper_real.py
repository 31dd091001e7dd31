"""The swapper against the REAL llama-server and three tiny models (matrix fast&a, fast&b)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT, free_port, pid_alive, start_server, stop_server, wait_until

pytestmark = pytest.mark.real
CHAT = "/v1/chat/completions"


def matrix_config(server_bin: str, models: dict[str, Path], ttl_a: int = 0, ctx: int = 1024) -> str:
    lines = [
        "healthCheckTimeout: 60",
        "macros:",
        f'  server: "{server_bin} --host 127.0.0.1 --port ${{PORT}} -t 1 -c {ctx} --no-warmup"',
        "models:",
    ]
    for name in ("fast", "a", "b"):
        lines += [f"  {name}:", f'    cmd: "${{server}} -m {models[name]} --alias {name}"',
                  "    concurrencyLimit: 20"]
        if name == "a" and ttl_a:
            lines.append(f"    ttl: {ttl_a}")
    lines += ["matrix:", "  vars: {f: fast, a: a, b: b}",
              "  sets:", '    fast_a: "f & a"', '    fast_b: "f & b"',
              "hooks:", "  on_startup:", "    preload: [fast]"]
    return "\n".join(lines) + "\n"


def chat(server, model: str, max_tokens: int = 8) -> dict:
    status, _, body = server.post(CHAT, {"model": model, "max_tokens": max_tokens,
                                         "messages": [{"role": "user", "content": "Say hello"}]})
    assert status == 200, body
    return json.loads(body)


def test_preload_and_residency_follow_the_matrix(swapper, llama_server_bin, tiny_models) -> None:
    server = swapper(matrix_config(llama_server_bin, tiny_models))
    wait_until(lambda: server.running().get("fast", {}).get("state") == "ready", 30, "fast preloaded")
    fast_pid = server.running()["fast"]["pid"]

    assert chat(server, "a")["choices"][0]["finish_reason"] == "length"
    running = server.running()
    assert set(running) == {"fast", "a"} and running["fast"]["pid"] == fast_pid
    a_pid = running["a"]["pid"]

    chat(server, "b")
    running = server.running()
    assert set(running) == {"fast", "b"}
    assert running["fast"]["pid"] == fast_pid  # fast untouched by the swap
    assert not pid_alive(a_pid)  # a really stopped
    assert all(pid_alive(row["pid"]) and row["state"] == "ready" for row in running.values())


def test_stream_arrives_in_several_reads_with_usage(swapper, llama_server_bin, tiny_models) -> None:
    server = swapper(matrix_config(llama_server_bin, tiny_models, ctx=4096))

    async def stream() -> tuple[list[bytes], float, float]:
        # ~3000 events (ignore_eos), several hundred KB, a second or more of generation: it
        # cannot arrive in one read (aiohttp pauses reading past 128 KB buffered), and a proxy
        # that streams hands over the first bytes long before the last (a buffering one would
        # hand over everything at the end). The margin is two orders of magnitude.
        async with aiohttp.ClientSession() as session:
            payload = {"model": "a", "stream": True, "max_tokens": 3000, "ignore_eos": True,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": "Say hello"}]}
            start = time.monotonic()
            async with session.post(server.base + CHAT, json=payload) as resp:
                assert resp.status == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
                chunks, first = [], 0.0
                async for chunk in resp.content.iter_any():
                    first = first or time.monotonic() - start
                    chunks.append(chunk)
                return chunks, first, time.monotonic() - start

    for _ in range(3):  # the pooled upstream connection survives llama-server closing it
        chunks, first, total = asyncio.run(stream())
        assert len(chunks) >= 2 and first < total / 4, (len(chunks), first, total)
        text = b"".join(chunks)
        assert text.rstrip().endswith(b"data: [DONE]")
        assert b'"usage"' in text


def test_ttl_unloads_an_idle_model(swapper, llama_server_bin, tiny_models) -> None:
    server = swapper(matrix_config(llama_server_bin, tiny_models, ttl_a=1))
    chat(server, "a")
    a_pid = server.running()["a"]["pid"]
    wait_until(lambda: "a" not in server.running(), 10, "a to unload after its 1 s TTL")
    assert not pid_alive(a_pid)
    assert "fast" in server.running()  # ttl 0: never unloaded


def test_twenty_concurrent_requests_start_one_process(swapper, llama_server_bin, tiny_models) -> None:
    server = swapper(matrix_config(llama_server_bin, tiny_models))

    async def burst() -> list[int]:
        async with aiohttp.ClientSession() as session:
            async def one() -> int:
                async with session.post(server.base + CHAT, json={"model": "b", "max_tokens": 4,
                                        "messages": [{"role": "user", "content": "hi"}]}) as resp:
                    await resp.read()
                    return resp.status
            return await asyncio.gather(*(one() for _ in range(20)))

    assert asyncio.run(burst()) == [200] * 20
    starts = [e for e in json.loads(server.get("/events")[2])
              if e["kind"] == "model_starting" and e["model"] == "b"]
    assert len(starts) == 1


def test_child_killed_mid_stream_gives_an_error_event(swapper, llama_server_bin, tiny_models) -> None:
    server = swapper(matrix_config(llama_server_bin, tiny_models, ctx=8192))
    chat(server, "a")
    pid = server.running()["a"]["pid"]

    async def stream() -> bytes:
        async with aiohttp.ClientSession() as session:
            payload = {"model": "a", "stream": True, "max_tokens": 6000,
                       "messages": [{"role": "user", "content": "Say hello"}]}
            async with session.post(server.base + CHAT, json=payload) as resp:
                first = await resp.content.readany()
                os.kill(pid, signal.SIGKILL)
                return first + await resp.content.read()

    text = asyncio.run(stream())
    last_event = text.strip().rsplit(b"\n\n", 1)[-1]
    assert b'"error"' in last_event and b"[DONE]" not in text
    wait_until(lambda: "a" not in server.running(), 5, "the dead child to be noticed")
    assert chat(server, "a")["choices"]  # the next request starts it again
    assert server.running()["a"]["pid"] != pid


def test_client_disconnect_reaches_llama_server_within_a_second(swapper, llama_server_bin,
                                                                  tiny_models) -> None:
    server = swapper(matrix_config(llama_server_bin, tiny_models, ctx=32768))
    chat(server, "a")

    def processing() -> bool:
        slots = json.loads(server.get("/upstream/a/slots")[2])
        return any(slot.get("is_processing") for slot in slots)

    async def read_then_leave() -> None:
        async with aiohttp.ClientSession() as session:
            payload = {"model": "a", "stream": True, "max_tokens": 30000,
                       "messages": [{"role": "user", "content": "Say hello"}]}
            resp = await session.post(server.base + CHAT, json=payload)
            await resp.content.readany()
            assert processing()
            resp.close()

    asyncio.run(read_then_leave())
    left = time.monotonic()
    wait_until(lambda: not processing(), 5, "llama-server to stop generating")
    assert time.monotonic() - left < 1.0


def test_sigkill_of_the_swapper_leaves_no_llama_server(tmp_path, llama_server_bin, tiny_models) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(matrix_config(llama_server_bin, tiny_models))
    port = free_port()
    server = start_server([sys.executable, "-m", "swapper", "-c", str(config), "--listen",
                           f"127.0.0.1:{port}", "--runtime-dir", str(tmp_path / "run")],
                          port, tmp_path / "swapper.log")
    try:
        chat(server, "a")
        pids = [row["pid"] for row in server.running().values()]
        assert len(pids) == 2
        server.popen.send_signal(signal.SIGKILL)
        server.popen.wait()
        wait_until(lambda: not any(pid_alive(p) for p in pids), 2, "children to die with the swapper")
    finally:
        stop_server(server)


def test_example_llama_swap_config_runs_unchanged(tmp_path, llama_server_bin, tiny_models) -> None:
    models_dir = tiny_models["a"].parent
    port = free_port()
    env = {"LLAMA_SERVER": llama_server_bin, "MODELS_DIR": str(models_dir)}
    server = start_server([sys.executable, "-m", "swapper", "-c",
                           str(ROOT / "examples" / "llama-swap-config.yaml"),
                           "--listen", f"127.0.0.1:{port}", "--runtime-dir", str(tmp_path / "run")],
                          port, tmp_path / "swapper.log", env)
    try:
        listed = {m["id"] for m in json.loads(server.get("/v1/models")[2])["data"]}
        for model in listed:
            assert chat(server, model)["choices"]
    finally:
        stop_server(server)
