"""One ``llmstack serve --demo`` on the real llama-server and the real model (SmolLM2), shared
by the SDK tests of a module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, start_llmstack, stop_server


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: str,
         smollm2_gguf: Path) -> Iterator[Server]:
    """The demo stack on SmolLM2 (``smollm2_gguf`` puts it in the cache, where the demo looks)."""
    server = start_llmstack(tmp_path_factory.mktemp("demo") / "serve.log", "--demo",
                            env={"LLMSTACK_LLAMA_SERVER": llama_server_bin})
    yield server
    stop_server(server)
