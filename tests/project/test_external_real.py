"""External (thin-client) mode against a real ``llmstack serve`` on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmstack.config.ini import bundled_template_text
from llmstack.project.paths import Project
from tests.conftest import cache_with_model, free_port, stop_server
from tests.project.conftest import Cli, serve_in

pytestmark = pytest.mark.real


def test_install_external_renders_against_the_remote_stack(
        cli: Cli, project: Project, tmp_path: Path, llama_server_bin: str) -> None:
    remote = tmp_path / "remote"
    (remote / ".llmstack").mkdir(parents=True)
    ini = remote / ".llmstack" / "models.ini"
    # tiers whose GGUFs are not downloaded: fine here; a 64 GB machine's budget, whatever this one has
    template = bundled_template_text().replace("; memory_budget_mb = 0", "memory_budget_mb = 57344")
    ini.write_text(template)
    port = free_port()
    server = serve_in(remote, port, tmp_path / "remote.log",
                      {"LLMSTACK_LLAMA_SERVER": llama_server_bin,
                       "HF_HUB_CACHE": str(tmp_path / "empty-hub"),
                       "LLMSTACK_CACHE_DIR": str(tmp_path / "cache")})
    try:
        result = cli("install", "--external", server.base + "/")
        assert result.returncode == 0, result.stderr
        assert project.default_channel.read_text() == f"external {server.base}\n"
        assert not project.models_ini.exists()  # no local stack, no local models.ini
        assert not (project.state / "active-channel").exists()
        config = json.loads(project.opencode_json.read_text())
        provider = config["provider"]["llmstack"]
        assert provider["options"]["baseURL"] == f"{server.base}/v1"
        assert "code-smart" in provider["models"] and config["small_model"] == "llmstack/code-fast"

        # configure re-fetches: a tier edited on the remote shows up here
        ini.write_text(template.replace("max_output_tokens = 32768", "max_output_tokens = 30000", 1))
        assert cli("configure").returncode == 0
        models = json.loads(project.opencode_json.read_text())["provider"]["llmstack"]["models"]
        assert models["code-smart"]["limit"]["output"] == 30000

        for verb in ("init", "setup", "serve"):
            refused = cli(verb)
            assert refused.returncode == 1 and "client of " + server.base in refused.stderr
            assert "Traceback" not in refused.stderr
        assert not project.models_ini.exists()

        back = cli("install", "--current")  # an explicit flag makes the project local again
        assert back.returncode == 0 and project.default_channel.read_text() == "current\n"
        assert project.models_ini.exists()
    finally:
        stop_server(server)


def test_external_against_the_demo_says_why_it_cannot(cli: Cli, tmp_path: Path,
                                                      llama_server_bin: str,
                                                      smollm2_gguf: Path) -> None:
    port = free_port()
    cache = cache_with_model(tmp_path / "cache", smollm2_gguf)  # the demo fetches nothing
    server = serve_in(tmp_path, port, tmp_path / "demo.log",
                      {"LLMSTACK_LLAMA_SERVER": llama_server_bin,
                       "LLMSTACK_CACHE_DIR": str(cache)}, "--demo")
    try:
        result = cli("install", "--external", server.base)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1].startswith("[!] ")
        assert "404" in result.stderr and "demo" in result.stderr
    finally:
        stop_server(server)
