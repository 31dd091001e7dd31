"""The Router hop: a request direct to a fake OpenAI server vs through llmstack's litellm tiers.

Targets, measured in one run against the same upstream (``tests/fake_upstream.py
--chunks 16``):

* ``direct``          - the fake on its own port;
* ``llmstack-hosted`` - ``llmstack serve`` with a hosted tier (``model = openai/fake``,
  ``api_base`` = the fake): litellm.acompletion in process;
* ``llmstack-router`` - the same with ``backends = <the fake>``: litellm's Router
  (least-busy, session affinity check) in front of acompletion.

Non-streaming latency of sequential requests on one keep-alive httpx connection;
"added" is p50/p95 against ``direct`` from the same run. Nothing asserts a time.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ms, p50, percentile, raw_timings, record

from tests.conftest import FAKE_UPSTREAM, Server, free_port, start_server, stop_server

ROUNDS = 200
TARGETS = ("direct", "llmstack-hosted", "llmstack-router")
TITLE = "Router hop: non-streaming latency, sequential (ms)"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, str]]]:
    """name -> (base URL, model)."""
    tmp = tmp_path_factory.mktemp("router-hop")
    started: list[Server] = []
    try:
        port = free_port()
        fake = start_server([sys.executable, str(FAKE_UPSTREAM), "--port", str(port),
                             "--chunks", "16"], port, tmp / "fake.log")
        started.append(fake)
        ini = tmp / "models.ini"
        ini.write_text(f"[hosted]\nrole = fast\nmodel = openai/fake\napi_base = {fake.base}/v1\n\n"
                       f"[router]\nbackends = {fake.base}\n")
        port = free_port()
        stack = start_server([sys.executable, "-m", "llmstack", "serve", "--port", str(port),
                              "--models-ini", str(ini)], port, tmp / "serve.log",
                             {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "OPENAI_API_KEY": "none"},
                             ready_path="/v1/models", timeout=60)
        started.append(stack)
        yield {"direct": (fake.base, "fake"), "llmstack-hosted": (stack.base, "hosted"),
               "llmstack-router": (stack.base, "router")}
    finally:
        for server in started:
            stop_server(server)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as session:
        yield session


@pytest.mark.parametrize("name", TARGETS)
def test_router_hop_latency(benchmark: Any, targets: dict[str, tuple[str, str]],
                            client: httpx.Client, name: str) -> None:
    base, model = targets[name]
    payload = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}

    def once() -> None:
        response = client.post(base + "/v1/chat/completions", json=payload)
        assert response.status_code == 200, response.text

    for _ in range(10):  # warm-up: litellm's import and the Router are made on first use
        once()
    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)
    timings = raw_timings(benchmark)
    figures = {"p50": ms(p50(timings)), "p95": ms(percentile(timings, 95))}
    direct = next((v for label, v in _rows() if label == "direct"), None)
    if direct is not None and name != "direct":
        figures.update(added_p50=round(figures["p50"] - direct["p50"], 3),
                       added_p95=round(figures["p95"] - direct["p95"], 3))
    benchmark.extra_info.update(figures)
    record(TITLE, name, **figures)


def _rows() -> list[tuple[str, dict[str, Any]]]:
    from conftest import SUMMARY

    return SUMMARY.get(TITLE, [])
