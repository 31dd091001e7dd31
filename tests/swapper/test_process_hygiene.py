"""Process hygiene against real children: huge log lines, setsid'd grandchildren, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import fake_cmd, pid_alive, stop_server, wait_until

CHAT = "/v1/chat/completions"
CHILDREN = Path(__file__).with_name("children.py")


def wrapped(mode: str, arg: str, *flags: str) -> str:
    """A YAML ``cmd``: the fake upstream run through one of ``children.py``'s wrappers."""
    return f"{sys.executable} {CHILDREN} {mode} {arg} -- {fake_cmd(*flags)}"


def test_a_five_megabyte_log_line_is_truncated_and_the_child_lives(swapper) -> None:
    server = swapper(f"models:\n  chatty:\n    cmd: {wrapped('long-line', '5000000')}\n")
    assert server.post(CHAT, {"model": "chatty", "messages": []}, timeout=20)[0] == 200
    pid = server.running()["chatty"]["pid"]
    logs = server.get("/logs")[2].decode()
    assert "bytes cut]" in logs and len(logs) < 100_000
    assert "server is listening" in logs  # the pump kept reading after the long line
    assert server.post(CHAT, {"model": "chatty", "messages": []})[0] == 200
    assert pid_alive(pid) and server.running()["chatty"]["pid"] == pid


def _grandchild(pidfile: Path) -> int:
    wait_until(pidfile.exists, 10, "the wrapper to record its grandchild")
    return int(pidfile.read_text())


def test_stop_exit_and_shutdown_end_a_grandchild_that_called_setsid(swapper, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    server = swapper(f"models:\n  wrapped:\n    cmd: {wrapped('setsid-child', str(pidfile))}\n")
    grandchildren: list[int] = []
    try:
        assert server.post(CHAT, {"model": "wrapped", "messages": []})[0] == 200
        grandchildren.append(_grandchild(pidfile))
        assert os.getsid(grandchildren[0]) != os.getsid(server.running()["wrapped"]["pid"])
        assert server.post("/unload/wrapped")[0] == 200
        assert not pid_alive(grandchildren[0])  # gone when /unload answers

        pidfile.unlink()
        assert server.post(CHAT, {"model": "wrapped", "messages": []})[0] == 200
        grandchildren.append(_grandchild(pidfile))
        os.kill(server.running()["wrapped"]["pid"], signal.SIGKILL)  # the wrapper dies alone
        wait_until(lambda: not pid_alive(grandchildren[1]), 5, "its setsid'd server to be ended")

        pidfile.unlink()
        assert server.post(CHAT, {"model": "wrapped", "messages": []})[0] == 200
        grandchildren.append(_grandchild(pidfile))
        stop_server(server)
        assert not pid_alive(grandchildren[2])
    finally:
        for pid in grandchildren:  # only on failure: the grandchildren this test caused
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _stream_through_sigterm(base: str, popen) -> tuple[bytes, float]:
    """Stream, SIGTERM the server at the first chunk, read to the end; (body, seconds after)."""
    chunks: list[bytes] = []
    signalled = 0.0
    payload = {"model": "slow", "stream": True, "messages": []}
    async with aiohttp.ClientSession() as session, session.post(base + CHAT, json=payload) as resp:
        assert resp.status == 200
        with contextlib.suppress(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                if not signalled:
                    popen.send_signal(signal.SIGTERM)
                    signalled = time.monotonic()
                chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - signalled


def last_event(body: bytes) -> bytes:
    return body.strip().rsplit(b"\n\n", 1)[-1]


def test_sigterm_ends_a_long_stream_with_an_error_event_within_the_grace(swapper) -> None:
    server = swapper(f"models:\n  slow:\n    cmd: {fake_cmd('--chunks', '3000', '--chunk-ms', '5')}\n")
    body, after = asyncio.run(_stream_through_sigterm(server.base, server.popen))
    assert b'"error"' in last_event(body) and b"shutting down" in last_event(body)
    assert after < 5 + 2  # the 5 s grace, then the error event at once
    server.popen.wait(10)


def test_sigterm_lets_a_short_stream_finish(swapper) -> None:
    server = swapper(f"models:\n  slow:\n    cmd: {fake_cmd('--chunks', '200', '--chunk-ms', '5')}\n")
    body, after = asyncio.run(_stream_through_sigterm(server.base, server.popen))
    assert last_event(body) == b"data: [DONE]"
    assert after < 5
    server.popen.wait(10)
