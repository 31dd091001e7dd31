"""One ``llmstack serve --demo`` on the real llama-server, shared by the SDK tests of a module."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.conftest import Server, free_port, start_server, stop_server


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: str) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "serve.log"
    server = start_server([sys.executable, "-m", "llmstack", "serve", "--demo", "--port", str(port)],
                          port, log, {"LLMSTACK_LLAMA_SERVER": llama_server_bin},
                          ready_path="/v1/models", timeout=60)
    yield server
    stop_server(server)
