"""One ``llmstack serve --demo`` on the real llama-server, shared by the SDK tests of a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Server, start_llmstack, stop_server


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: str) -> Iterator[Server]:
    server = start_llmstack(tmp_path_factory.mktemp("demo") / "serve.log", "--demo",
                            env={"LLMSTACK_LLAMA_SERVER": llama_server_bin})
    yield server
    stop_server(server)
