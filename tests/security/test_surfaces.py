"""Issue 18 item 9, one test each, against real `python -m swapper` / `llmstack serve`
processes: an upstream's HTML error page, a profile name of the wrong type, a key without
its scheme, the watchdog's environment, the page's security headers, an unknown method,
a megabyte model name."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import Server, stop_server, wait_until
from tests.front_door_support import raw_request, start_fake_stack, start_swapper
from tests.hostile_upstream import exchange, hostile_cmd, http_request

CHAT = "/v1/chat/completions"
KEY = "sekrit"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def swapper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("surfaces")
    server = start_swapper(tmp, f"apiKeys: [{KEY}]\nmodels:\n  h:\n    cmd: {hostile_cmd()}\n"
                                "  other:\n    cmd: " + hostile_cmd() + "\n"
                                "profiles:\n  p:\n    pins: {h: other}\n",
                           env={"LLMSTACK_API_KEYS": KEY})
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_fake_stack(tmp_path_factory.mktemp("stack"), env={"LLMSTACK_API_KEYS": KEY})
    yield server
    stop_server(server)


def port(server: Server) -> int:
    return int(server.base.rsplit(":", 1)[1])


def call(server: Server, method: str, target: str, body: object = None,
         **headers: str) -> tuple[int, dict[str, str], bytes]:
    data = b"" if body is None else json.dumps(body).encode()
    reply = exchange(port(server), http_request(method, target, {
        **AUTH, "content-type": "application/json", **headers}, data), timeout=30)
    return reply.status, reply.headers, reply.body


def chat(model: str, stream: bool = False) -> dict[str, object]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


def test_an_upstream_html_error_page_becomes_a_json_error_with_its_status(
        swapper: Server) -> None:
    status, headers, body = call(swapper, "POST", CHAT, chat("h"), **{"x-hostile": "html-500"})
    assert status == 500 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["message"].startswith("upstream answered 500 with text/html: 500 Internal "
                                       "Server Error nginx nginx")
    assert len(error["message"]) < 300 and "<" not in error["message"]
    assert error["type"] == "server_error" and error["code"] == "upstream_error"
    # streamed: the same error (the head had not gone out; h is loaded now)
    status, _, body = call(swapper, "POST", CHAT, chat("h", stream=True),
                           **{"x-hostile": "html-500"})
    assert status == 500 and json.loads(body)["error"]["code"] == "upstream_error"
    # /upstream/{model}/... stays raw: the upstream's own page
    status, headers, body = call(swapper, "GET", "/upstream/h/hostile/html-500")
    assert status == 500 and headers["content-type"] == "text/html" and body.startswith(b"<html>")


@pytest.mark.parametrize("payload", [{"name": 5}, {"name": ["p"]}, {"name": {}}, {}, {"nam": "p"}])
def test_a_profile_name_that_is_not_a_string_or_null_is_a_400(swapper: Server,
                                                              payload: object) -> None:
    assert call(swapper, "PUT", "/api/profiles/active", {"name": "p"})[0] == 200
    status, _, body = call(swapper, "PUT", "/api/profiles/active", payload)
    assert status == 400 and "'name'" in json.loads(body)["error"]["message"]
    active = json.loads(call(swapper, "GET", "/api/profiles")[2])
    assert active.get("active") == "p", active  # unchanged
    assert call(swapper, "PUT", "/api/profiles/active", {"name": None})[0] == 200


@pytest.mark.parametrize("which", ["swapper", "stack"])
def test_a_key_without_its_bearer_scheme_is_refused_on_both_servers(
        which: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(which)
    assert call(server, "GET", "/v1/models", authorization=KEY)[0] == 401
    assert call(server, "GET", "/v1/models", authorization=f"Basic {KEY}")[0] == 401
    assert call(server, "GET", "/v1/models", authorization=f"bearer  {KEY} ")[0] == 200
    assert call(server, "GET", "/v1/models", authorization="", **{"x-api-key": KEY})[0] == 200
    # a client that sends both (a proxy adds Authorization): the x-api-key counts
    assert call(server, "GET", "/v1/models", authorization="Basic xyz",
                **{"x-api-key": KEY})[0] == 200


def test_the_watchdog_gets_none_of_our_environment(swapper: Server) -> None:
    assert call(swapper, "POST", CHAT, chat("h"))[0] == 200  # a child: the watchdog runs
    server = psutil.Process(swapper.popen.pid)

    def watchdog() -> psutil.Process | None:
        return next((p for p in server.children() if p.cmdline()[:4] == [
            sys.executable, "-I", "-S", "-c"]), None)

    wait_until(lambda: watchdog() is not None, 10, "the watchdog process")
    found = watchdog()
    assert found is not None
    environ = Path(f"/proc/{found.pid}/environ").read_bytes().split(b"\0")
    assert not any(item.startswith(b"LLMSTACK_API_KEYS=") for item in environ)
    assert [item for item in environ if item and not item.startswith(b"LD_LIBRARY_PATH=")] == []


@pytest.mark.parametrize("path", ["/ui", "/ui/", "/ui/app.js"])
def test_the_page_forbids_framing_sniffing_and_foreign_scripts(swapper: Server,
                                                              path: str) -> None:
    status, headers, _ = call(swapper, "GET", path, authorization="")
    assert status == 200
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("which", ["swapper", "stack"])
def test_an_unknown_method_is_a_json_400(which: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(which)
    reply = raw_request(server, b"FROB /health HTTP/1.1\r\nHost: x")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("which", ["swapper", "stack"])
def test_a_megabyte_model_name_is_not_echoed_back(which: str,
                                                  request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(which)
    huge = "m" * (1 << 20)
    status, _, body = call(server, "POST", CHAT, chat(huge))
    assert status == 400 and len(body) < 600, body[:200]
    assert f"({1 << 20} characters)" in json.loads(body)["error"]["message"]
    long = "n" * 30000  # in a path: bounded by the header limit, still not echoed whole
    for method, target in (("GET", f"/upstream/{long}/x"), ("POST", f"/api/models/load/{long}"),
                           ("POST", f"/unload/{long}"), ("GET", f"/logs/stream/{long}"),
                           *([("GET", f"/v1/models/{long}")] if which == "stack" else [])):
        status, _, body = call(server, method, target)
        assert status == 404 and len(body) < 600, (target[:40], body[:200])
