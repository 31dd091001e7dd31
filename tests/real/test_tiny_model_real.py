"""One end-to-end check with the real llama-server binary and a generated tiny model."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from llmstack.models.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.real

HEALTH_DEADLINE_S = 30.0
POLL_INTERVAL_S = 0.01


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Poll /health until it answers 200; fail if the server exits or the deadline passes."""
    deadline = time.monotonic() + HEALTH_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama-server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _request(port, "GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"/health not 200 within {HEALTH_DEADLINE_S}s:\n{log.read_text()[-3000:]}")


def test_tiny_model_chat_runs_to_max_tokens(tmp_path: Path, llama_server_bin: str) -> None:
    binary = llama_server_bin
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    port = _free_port()
    log = tmp_path / "llama-server.log"
    argv = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-c", "1024", "-t", "1", "--no-warmup"]
    with log.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT)
    try:
        _wait_healthy(proc, port, log)
        status, body = _request(port, "POST", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 8,
        })
        assert status == 200, body
        choice = json.loads(body)["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] == "length"
    finally:
        proc.kill()
        proc.wait()
