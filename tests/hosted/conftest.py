"""Fixtures for tiers litellm serves: a loopback provider fake and ``llmstack serve`` on an ini."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, free_port, http, start_llmstack, start_server, stop_server

PROVIDER_FAKE = Path(__file__).with_name("provider_fake.py")
OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def needs_litellm() -> None:
    """Skip (fail under CI) without litellm; never imports it here (that fetches a cost map)."""
    if importlib.util.find_spec("litellm") is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("litellm is not installed")


class Provider:
    """The provider fake: its base URL, its request log, its answer mode."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.base = server.base

    def log(self) -> list[dict]:
        return json.loads(self.server.get("/_log")[2])

    def mode(self, **mode: object) -> None:
        assert http("POST", self.base + "/_mode", mode)[0] == 200


def start_provider(directory: Path) -> Provider:
    port = free_port()
    return Provider(start_server([sys.executable, str(PROVIDER_FAKE), "--port", str(port)], port,
                                 directory / f"provider-{port}.log"))


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    """One provider fake per test module (answering normally again before every test)."""
    fake = start_provider(tmp_path_factory.mktemp("provider"))
    yield fake
    stop_server(fake.server)


@pytest.fixture(autouse=True)
def _provider_answers(request: pytest.FixtureRequest) -> None:
    if "provider" in request.fixturenames:
        request.getfixturevalue("provider").mode(mode="ok")


@pytest.fixture(scope="module")
def serve_ini(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Factory: ``llmstack serve --models-ini <text>`` in a subprocess, offline for litellm."""
    tmp_path = tmp_path_factory.mktemp("serve")
    started: list[Server] = []

    def run(ini: str, env: dict[str, str] | None = None, *args: str) -> Server:
        path = tmp_path / f"models{len(started)}.ini"
        path.write_text(ini)
        server = start_llmstack(tmp_path / f"serve{len(started)}.log", "--models-ini",
                                str(path), *args, env={**OFFLINE, **(env or {})})
        started.append(server)
        return server

    yield run
    for server in started:
        stop_server(server)


def sse_events(body: bytes) -> list[bytes]:
    """The data payloads of an SSE body, in order."""
    return [line.removeprefix(b"data: ") for event in body.split(b"\n\n")
            for line in event.split(b"\n") if line.startswith(b"data: ")]


def post(base: str, path: str, payload: object, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """POST JSON with extra headers; header names lower-cased; errors returned, not raised."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(base + path, data=json.dumps(payload).encode(), method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
