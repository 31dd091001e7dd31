"""With no API key (the default) only local pages and local names are served; keys stay ours."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapper.front_door import is_loopback, split_host
from tests.conftest import Server, free_port, http, stop_server, wait_until
from tests.front_door_support import (
    error_of,
    one_model_yaml,
    port_of,
    raw_request,
    start_fake_stack,
    start_swapper,
    status_of,
    swapper_argv,
)

ECHO = Path(__file__).with_name("echo_headers_upstream.py")
UNLOAD = b"POST /unload HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nHost: "


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started = start_swapper(tmp_path, one_model_yaml())
    yield started
    stop_server(started)


def host(server: Server) -> bytes:
    return b"127.0.0.1:%d" % port_of(server)


def test_a_cross_origin_page_cannot_drive_the_stack(server: Server) -> None:
    """A web page's simple text/plain POST (no preflight) is refused; the server's own origin is not."""
    for origin in (b"http://evil.example", b"null", b"http://127.0.0.1:1"):
        reply = raw_request(server, UNLOAD + host(server) + b"\r\nOrigin: " + origin)
        assert status_of(reply) == 403, origin
        assert error_of(reply)["type"] == "permission_error"
    chat = (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: text/plain\r\n"
            b"Origin: http://evil.example\r\nContent-Length: 14\r\nHost: " + host(server))
    assert status_of(raw_request(server, chat, b'{"model": "m"}')) == 403
    assert server.running() == {}  # nothing was loaded
    own = raw_request(server, UNLOAD + host(server) + b"\r\nOrigin: http://" + host(server))
    assert status_of(own) == 200
    assert status_of(raw_request(server, UNLOAD + host(server))) == 200  # no Origin: not a browser


def test_a_foreign_host_header_is_refused(server: Server) -> None:
    """DNS rebinding: a foreign name pointed at 127.0.0.1 arrives with its own Host header."""
    port = port_of(server)
    for name in (b"evil.example:%d" % port, b"evil.example", b"127.0.0.1:%d" % (port + 1),
                 b"localhost.evil.example:%d" % port):
        reply = raw_request(server, b"GET /v1/models HTTP/1.1\r\nHost: " + name)
        assert status_of(reply) == 403, name
        assert error_of(reply)["code"] == "forbidden_host"
    for name in (b"127.0.0.1:%d" % port, b"localhost:%d" % port, b"LOCALHOST", b"[::1]:%d" % port):
        assert status_of(raw_request(server, b"GET /v1/models HTTP/1.1\r\nHost: " + name)) == 200, name


def test_a_key_lifts_the_local_only_rule(tmp_path: Path) -> None:
    server = start_swapper(tmp_path, one_model_yaml(extra="apiKeys: [sekrit]\n"))
    try:
        reply = raw_request(server, b"GET /v1/models HTTP/1.1\r\nHost: llm.example\r\n"
                                    b"Origin: http://ui.example\r\nAuthorization: Bearer sekrit")
        assert status_of(reply) == 200
        assert b"access-control-allow-origin" not in reply.lower()  # still no CORS unless configured
    finally:
        stop_server(server)


def run_briefly(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_network_bind_without_a_key_is_refused_by_both_commands(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(one_model_yaml())
    ini = tmp_path / "models.ini"
    ini.write_text("[DEFAULT]\nhost = 0.0.0.0\n")
    for argv in (swapper_argv(config, free_port(), tmp_path / "run", host="0.0.0.0"),
                 [sys.executable, "-m", "llmstack", "serve", "--demo", "--host", "0.0.0.0",
                  "--port", str(free_port())],
                 [sys.executable, "-m", "llmstack", "serve", "--models-ini", str(ini),
                  "--port", str(free_port())]):
        # serve finds a llama-server before it checks the address: any executable, never run
        done = run_briefly(argv, {"LLMSTACK_API_KEYS": "", "LLMSTACK_LLAMA_SERVER": sys.executable})
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--allow-unauthenticated-network" in lines[0], done.stderr


def test_the_override_flag_serves_the_network_and_names_the_risk(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(one_model_yaml())
    port = free_port()
    log = tmp_path / "swapper.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(swapper_argv(config, port, tmp_path / "run",
                                              "--allow-unauthenticated-network", host="0.0.0.0"),
                                 stdout=out, stderr=subprocess.STDOUT)
    server = Server(popen, f"http://127.0.0.1:{port}", log)
    try:
        wait_until(lambda: _answers(server), 30, "the swapper on 0.0.0.0")
        assert "anyone who can reach it can run models" in server.output()
    finally:
        stop_server(server)

    stack = start_fake_stack(tmp_path / "stack", "--host", "0.0.0.0",
                             "--allow-unauthenticated-network")
    try:
        assert "anyone who can reach it can run models" in stack.output()
    finally:
        stop_server(stack)


def _answers(server: Server) -> bool:
    try:
        return server.get("/health")[0] == 200
    except OSError:
        return False


def test_the_stacks_keys_never_reach_a_child(tmp_path: Path) -> None:
    """Not through the environment (read from /proc), not as forwarded request headers."""
    secrets = {"LLMSTACK_API_KEYS": "sekrit,other", "LLMSTACK_BACKENDS_API_KEY": "team",
               "OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "sk-y", "HF_TOKEN": "hf_z",
               "AWS_SECRET_ACCESS_KEY": "aws", "AWS_ACCESS_KEY_ID": "id", "MY_DB_PASSWORD": "pw"}
    stack = start_fake_stack(tmp_path / "stack", env={**secrets, "KEYBOARD_LAYOUT": "us"})
    try:
        status, _, _ = http("GET", stack.base + "/running")
        assert status == 401

        def child_pid() -> int | None:
            reply = raw_request(stack, b"GET /running HTTP/1.1\r\nHost: x\r\n"
                                       b"Authorization: Bearer sekrit")
            rows = json.loads(reply.partition(b"\r\n\r\n")[2])["running"]
            return rows[0]["pid"] if rows and rows[0].get("pid") else None

        wait_until(lambda: child_pid() is not None, 30, "the preloaded tier's child")
        pid = child_pid()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {item.partition(b"=")[0].decode() for item in environ}
        assert not names & set(secrets), names & set(secrets)  # nor a provider's credentials
        assert {"HF_HUB_CACHE", "KEYBOARD_LAYOUT"} <= names  # the rest is inherited
    finally:
        stop_server(stack)

    yaml = (f"apiKeys: [sekrit]\nmodels:\n  echo:\n    cmd: {sys.executable} {ECHO} --port ${{PORT}}\n"
            "    checkEndpoint: /health\n")
    server = start_swapper(tmp_path, yaml)
    try:
        for auth in (b"Authorization: Bearer sekrit", b"x-api-key: sekrit"):
            reply = raw_request(server, b"GET /upstream/echo/anything HTTP/1.1\r\nHost: x\r\n"
                                        + auth + b"\r\nX-Keep: kept", timeout=30)
            assert status_of(reply) == 200, reply
            seen = dict(json.loads(reply.partition(b"\r\n\r\n")[2])["headers"])
            assert "authorization" not in seen and "x-api-key" not in seen
            assert seen["x-keep"] == "kept"
    finally:
        stop_server(server)


@pytest.mark.parametrize("value, expected", [
    ("localhost:8080", ("localhost", 8080)), ("Example.COM", ("example.com", None)),
    ("[::1]:80", ("::1", 80)), ("[::1]", ("::1", None)), ("::1", ("::1", None)),
    ("a:b", ("", None)), ("[::1]x", ("", None)), ("[::1", ("", None)),
])
def test_host_header_parsing(value: str, expected: tuple[str, int | None]) -> None:
    assert split_host(value) == expected


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.com", False),
])
def test_only_loopback_binds_need_no_key(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
