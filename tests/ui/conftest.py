"""Helpers for the status-page, metrics, loading-progress and top tests."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, fake_cmd

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHAT = "/v1/chat/completions"
LOAD_MS = 3000


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, parsed by prometheus_client's own parser."""
    status, headers, body = server.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def slow_config(send_loading_state: bool = False, extra: str = "") -> str:
    """A YAML config: ``slow`` takes LOAD_MS to become healthy, ``quick`` is ready at once."""
    return (f"sendLoadingState: {str(send_loading_state).lower()}\nmodels:\n"
            f"  slow:\n    cmd: {fake_cmd('--load-ms', str(LOAD_MS), '--chunks', '5')}\n"
            f"  quick:\n    cmd: {fake_cmd('--chunks', '3')}\n{extra}")


def post(base: str, path: str, payload: dict,
         headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """POST on a fresh connection; returns once the response head arrived (body unread)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", path, json.dumps(payload).encode(),
                 {"content-type": "application/json", **(headers or {})})
    return conn.getresponse()


def sse_data(raw: bytes) -> list[object]:
    """The decoded ``data:`` payloads of an SSE body."""
    out: list[object] = []
    for line in raw.split(b"\n"):
        line = line.strip()
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
