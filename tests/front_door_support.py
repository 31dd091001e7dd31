"""Helpers for the front-door tests: servers started with extra flags, raw-socket requests."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from llmstack.models.tiny_gguf import write_tiny_gguf
from tests.conftest import FAKE_UPSTREAM, Server, fake_cmd, free_port, start_llmstack, start_server

FAST_INI = """\
[DEFAULT]
threads = 1
memory_budget_mb = 4096

[code-fast]
role = fast
hf_repo = test/tiny
hf_file = fast.gguf
ctx_size = 4096
"""


def swapper_argv(config: Path, port: int, runtime: Path, *args: str,
                 host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "swapper", "-c", str(config), "--listen", f"{host}:{port}",
            "--runtime-dir", str(runtime), *args]


def start_swapper(tmp_path: Path, config_yaml: str, *args: str,
                  env: dict[str, str] | None = None) -> Server:
    """``python -m swapper`` on 127.0.0.1 with extra CLI ``args``; stop it with stop_server."""
    config = tmp_path / "config.yaml"
    config.write_text(config_yaml)
    port = free_port()
    return start_server(swapper_argv(config, port, tmp_path / "run", *args), port,
                        tmp_path / "swapper.log", env)


def one_model_yaml(*flags: str, extra: str = "") -> str:
    return f"models:\n  m:\n    cmd: {fake_cmd(*flags)}\n{extra}"


def fake_stack_env(tmp_path: Path, *flags: str) -> tuple[Path, dict[str, str]]:
    """A models.ini with one fast tier, and the env that serves it with the fake llama-server
    (given ``flags`` too)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    wrapper = tmp_path / "fake-llama-server"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_UPSTREAM} "$@" {" ".join(flags)}\n')
    wrapper.chmod(0o755)
    snapshot = tmp_path / "hub" / "models--test--tiny" / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    write_tiny_gguf(snapshot / "fast.gguf", seed=0)
    ini = tmp_path / "models.ini"
    ini.write_text(FAST_INI)
    return ini, {"LLMSTACK_LLAMA_SERVER": str(wrapper), "HF_HUB_CACHE": str(tmp_path / "hub"),
                 "LLMSTACK_CACHE_DIR": str(tmp_path / "cache")}


def start_fake_stack(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    """``llmstack serve`` on the one-tier models.ini, the fake upstream standing in."""
    ini, base_env = fake_stack_env(tmp_path)
    return start_llmstack(tmp_path / "serve.log", "--models-ini", str(ini), *args,
                          env={**base_env, **(env or {})}, ready_path="/health")


def port_of(server: Server) -> int:
    return int(server.base.rsplit(":", 1)[1])


def raw_request(server: Server, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    """Send ``head`` (request line and headers, no final blank line) and ``body``; the reply."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=timeout) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        return read_reply(sock)


def read_reply(sock: socket.socket) -> bytes:
    """One response: the head, then Content-Length bytes (or until close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is not None and len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply[:5].upper() == b"HTTP/" else 0


def error_of(reply: bytes) -> dict:
    return json.loads(reply.partition(b"\r\n\r\n")[2])["error"]
