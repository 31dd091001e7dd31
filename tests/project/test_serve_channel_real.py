"""``llmstack serve`` serves the channel: pinned by ``install --next``, or chosen by flag or env."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmstack.project.paths import Project
from tests.conftest import free_port, stop_server, tiny_stack, wait_until
from tests.project.conftest import Cli, serve_in

pytestmark = pytest.mark.real

INI = """\
[DEFAULT]
threads = 1
n_gpu_layers = 0
flash_attn = auto
cache_type_k = f16
cache_type_v = f16
memory_budget_mb = 1024

[ROUTING]
high_fidelity_ceiling = 0
mid_fidelity_ceiling = 1

[fast]
role = fast
hf_repo = llmstack-demo/tiny
hf_file = tiny-fast.gguf
hf_file_next = tiny-plan.gguf
ctx_size = 4096
max_output_tokens = 8
"""


def served_file(server) -> str:
    """The GGUF the fast tier's llama-server loaded, from its log."""
    def loaded() -> bool:
        return "loading model" in server.get("/logs")[2].decode()

    wait_until(loaded, 30, "the fast tier to load")
    line = next(ln for ln in server.get("/logs")[2].decode().splitlines() if "loading model" in ln)
    return line.rsplit("/", 1)[-1].strip("'")


@pytest.mark.parametrize("how, env, args, expected, note", [
    ("pinned next", {}, (), "tiny-plan.gguf", ""),
    ("flag beats the pin", {}, ("--channel", "current"), "tiny-fast.gguf", ""),
    ("env beats the pin", {"LLMSTACK_USE_NEXT": "0"}, (), "tiny-fast.gguf", ""),
    ("flag beats env, and says so", {"LLMSTACK_USE_NEXT": "0"}, ("--channel", "next"),
     "tiny-plan.gguf", "ignoring $LLMSTACK_USE_NEXT=0"),
])
def test_serve_honours_the_channel(cli: Cli, project: Project, tmp_path: Path, llama_server_bin: str,
                                   how: str, env: dict[str, str], args: tuple[str, ...],
                                   expected: str, note: str) -> None:
    project.state.mkdir()
    project.models_ini.write_text(INI)
    assert cli("install", "--next").returncode == 0
    server = serve_in(project.root, free_port(), tmp_path / "serve.log",
                      {"LLMSTACK_LLAMA_SERVER": llama_server_bin, **tiny_stack(tmp_path / "hub"),
                       **env},
                      *args)
    try:
        assert served_file(server) == expected, how
        channel = "next" if expected == "tiny-plan.gguf" else "current"
        assert project.active_channel.read_text() == channel + "\n"
    finally:
        stop_server(server)
    if note:
        assert note in server.output()
