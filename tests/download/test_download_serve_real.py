"""The path a user takes: serve says what to run, ``llmstack download`` fetches it, serve runs it."""

from __future__ import annotations

import json

import pytest

from ..conftest import start_llmstack, stop_server
from .conftest import REPO, Project
from .fake_hub import FakeHub

pytestmark = pytest.mark.real

INI = f"""\
[DEFAULT]
threads = 1
n_gpu_layers = 0
flash_attn = auto
cache_type_k = f16
cache_type_v = f16
memory_budget_mb = 1024

[tiny]
hf_repo = {REPO}
hf_file = tiny.gguf
ctx_size = 2048
"""


def test_missing_file_names_the_download_command_which_makes_it_servable(
        project: Project, hub: FakeHub, ggufs: list[bytes], llama_server_bin: str) -> None:
    hub.add(REPO, "tiny.gguf", ggufs[0])
    project.write_ini(INI)
    server = start_llmstack(project.root / "serve.log", "--models-ini", str(project.ini),
                            env={**project.env, "LLMSTACK_LLAMA_SERVER": llama_server_bin})
    chat = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    try:
        status, _, body = server.post("/v1/chat/completions", chat)
        error = json.loads(body)["error"]
        assert status == 503 and error["code"] == "model_not_downloaded"
        assert "run: llmstack download tiny" in error["message"]

        assert project.run("download", "tiny").returncode == 0
        assert server.post("/reload")[0] == 200
        status, _, body = server.post("/v1/chat/completions", chat)
        assert status == 200, body
        assert json.loads(body)["choices"][0]["message"]["name"] == "tiny"
    finally:
        stop_server(server)
