"""Smuggling through ``/upstream/{model}/{path}`` against the REAL llama-server.

After each hostile request, plain requests on the same (pooled) upstream
connections must get their own answers: a smuggled second request would leave
an extra answer queued there for the next client.
"""

from __future__ import annotations

import json

import pytest

from tests.hostile_upstream import exchange, http_request

pytestmark = pytest.mark.real

HOSTILE = [
    "/upstream/m/health%0D%0AX-Injected:%201",
    "/upstream/m/props%20HTTP/1.1%0D%0AHost:%20x%0D%0A%0D%0AGET%20/slots%20HTTP/1.1",
    "/upstream/m/health%0aGET%20/slots",
    "/upstream/m/props?x=%0D%0A%0D%0AGET%20/slots",
]


def test_no_encoded_path_smuggles_a_request_into_llama_server(swapper, llama_server_bin,
                                                               tiny_models) -> None:
    server = swapper("models:\n  m:\n    cmd: " + f"{llama_server_bin} --host 127.0.0.1 "
                     f"--port ${{PORT}} -t 1 -c 512 --no-warmup -m {tiny_models['a']}\n")
    port = int(server.base.rsplit(":", 1)[1])
    for path in HOSTILE:
        assert exchange(port, http_request("GET", path)).status == 400, path
        for _ in range(3):  # the pooled connections carry no stray answer
            props = exchange(port, http_request("GET", "/upstream/m/props"))
            assert props.status == 200 and "default_generation_settings" in props.json()
            slots = exchange(port, http_request("GET", "/upstream/m/slots"))
            assert slots.status == 200 and isinstance(json.loads(slots.body), list)
    dotted = exchange(port, http_request("GET", "/upstream/m/v1/../../%2e%2e/props"))
    assert dotted.status == 200 and "default_generation_settings" in dotted.json()
