"""With no litellm-served tier, ``llmstack serve`` never imports litellm (``-X importtime``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, start_server, stop_server
from tests.hosted.conftest import post

pytestmark = pytest.mark.real


def test_litellm_is_never_imported_without_a_hosted_tier(tmp_path: Path,
                                                         llama_server_bin: str) -> None:
    port = free_port()
    server = start_server([sys.executable, "-X", "importtime", "-m", "llmstack", "serve", "--demo",
                           "--port", str(port)], port, tmp_path / "serve.log",
                          {"LLMSTACK_LLAMA_SERVER": llama_server_bin}, ready_path="/v1/models",
                          timeout=60)
    try:
        status, _, body = post(server.base, "/v1/chat/completions", {
            "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, body
        assert server.get("/v1/models")[0] == 200
    finally:
        stop_server(server)
    imported = re.findall(r"^import time:.*\|\s+([\w.]+)$", server.output(), re.MULTILINE)
    assert "llmstack.serving.hosted" in imported  # the log does record every import
    assert [name for name in imported if name.split(".")[0] == "litellm"] == []
