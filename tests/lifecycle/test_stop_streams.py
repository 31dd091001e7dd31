"""``llmstack stop`` with long-lived streams open: they end as shutdown starts, stop is graceful."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, pid_alive
from tests.front_door_support import fake_stack_env
from tests.lifecycle.conftest import Cli
from tests.lifecycle.test_lifecycle import _record


def _open_event_stream(port: int) -> tuple[socket.socket, bytes]:
    """A raw ``GET /api/events`` (what a /ui tab holds open), read up to its snapshot."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    seen = b""
    while b'"kind": "snapshot"' not in seen:
        chunk = sock.recv(65536)
        assert chunk, seen
        seen += chunk
    return sock, seen


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (the socket's timeout bounds it)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.real
def test_stop_ends_an_open_ui_stream_and_log_follower_without_sigkill(
        cli: Cli, project: Path, cli_env: dict[str, str], llama_server_bin: str) -> None:
    port = free_port()
    assert cli("start", "--detach", "--port", str(port)).returncode == 0
    pid = _record(project)["pid"]
    events, _ = _open_event_stream(port)
    follow = subprocess.Popen([sys.executable, "-m", "llmstack", "logs", "fast", "-f", "-n", "1"],
                              cwd=project, env=cli_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None and follow.stdout.readline()  # following, live
        started = time.monotonic()
        stopped = cli("stop")
        took = time.monotonic() - started
        assert stopped.returncode == 0 and "[OK] stopped" in stopped.stdout, stopped.stdout
        assert "SIGKILL" not in stopped.stdout  # it went on SIGTERM alone
        assert took < 3.0, f"stop took {took:.1f} s"
        assert not pid_alive(pid)
        assert follow.wait(5) == 0
        assert "the stack closed the log stream" in (follow.stderr.read() if follow.stderr else "")
        rest = _read_to_end(events)
        assert rest.rstrip().endswith(b"0\r\n\r\n".rstrip())  # a complete chunked response
        assert b'"kind": "shutting_down"' in rest
    finally:
        events.close()
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    log = (project / ".llmstack" / "logs" / "llmstack.log").read_text()
    assert "timeout graceful shutdown exceeded" not in log


def test_stop_lets_an_in_flight_stream_end_with_its_error_event_and_needs_no_sigkill(
        cli: Cli, project: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    ini, env = fake_stack_env(tmp_path / "stack", "--chunks", "3000", "--chunk-ms", "5")
    (project / ".llmstack" / "models.ini").write_text(ini.read_text())
    port = free_port()
    assert cli("start", "--detach", "--port", str(port), env=env).returncode == 0
    pid = _record(project)["pid"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": "code-fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}))
    response = conn.getresponse()
    assert response.status == 200
    body = response.read1(65536)  # streaming: 3000 chunks 5 ms apart take 15 s
    stop = subprocess.Popen([sys.executable, "-m", "llmstack", "stop"], cwd=project,
                            env={**cli_env, **env}, stdout=subprocess.PIPE, text=True)
    try:
        with contextlib.suppress(http.client.HTTPException, ValueError, OSError):  # a cut stream
            while chunk := response.read1(65536):
                body += chunk
        out, _ = stop.communicate(timeout=30)
    finally:
        conn.close()
        if stop.poll() is None:
            stop.kill()
    last = body.strip().rsplit(b"\n\n", 1)[-1]
    assert b'"error"' in last and b"shutting down" in last, last  # never cut silently
    assert stop.returncode == 0 and "[OK] stopped" in out and "SIGKILL" not in out, out
    assert not pid_alive(pid)
