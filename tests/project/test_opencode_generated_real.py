"""The real opencode client driven by the opencode.json a project generated (not one the test wrote)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from llmstack.demo import demo_text
from llmstack.project import Project
from tests.conftest import free_port, stop_server
from tests.project.conftest import Cli, hub_with_demo_models, serve_in
from tests.real.test_opencode_real import opencode_bin  # noqa: F401  (the cached npm install)

pytestmark = pytest.mark.real


def opencode_env(home: Path, config: Path) -> dict[str, str]:
    """An isolated, offline opencode reading ``config``."""
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local/share"), "XDG_CACHE_HOME": str(home / ".cache"),
            "OPENCODE_CONFIG": str(config), "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "npm_config_registry": "http://127.0.0.1:9/"}  # its plugin install stays offline


def test_opencode_runs_on_the_projects_generated_config(
        cli: Cli, project: Project, tmp_path: Path, llama_server_bin: str,
        opencode_bin: Path) -> None:  # noqa: F811
    port = free_port()
    project.state.mkdir()
    project.models_ini.write_text(demo_text().replace("[DEFAULT]\n", f"[DEFAULT]\nrouter_port = {port}\n"))
    configured = cli("configure")
    assert configured.returncode == 0, configured.stderr
    config = json.loads(project.opencode_json.read_text())
    assert config["provider"]["llmstack"]["options"]["baseURL"] == f"http://127.0.0.1:{port}/v1"

    hub = hub_with_demo_models(tmp_path / "hub")
    server = serve_in(project.root, port, tmp_path / "serve.log",
                      {"LLMSTACK_LLAMA_SERVER": llama_server_bin, "HF_HUB_CACHE": str(hub)})
    env = opencode_env(tmp_path / "home", project.opencode_json)
    try:
        assert project.active_channel.read_text() == "current\n"  # serve records what it serves
        result = subprocess.run([str(opencode_bin), "run", "--format", "json", "say", "hi"],
                                cwd=project.root, env=env, capture_output=True, text=True,
                                timeout=120, check=False)
        events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        assert result.returncode == 0, result.stderr[-2000:]
        kinds = [e["type"] for e in events]
        assert "error" not in kinds and "text" in kinds
        stack_events = json.loads(server.get("/events")[2])
        assert any(e["kind"] == "routed" for e in stack_events), "main request went through auto"
        titles = [e for e in stack_events if e["kind"] == "named"]
        assert titles and {e["tier"] for e in titles} == {"fast"}, "title request on small_model"
    finally:
        stop_server(server)
    assert not project.active_channel.exists()  # removed when serve stopped


def test_opencode_accepts_the_template_config(cli: Cli, project: Project, tmp_path: Path,
                                              opencode_bin: Path) -> None:  # noqa: F811
    """opencode's own config loader resolves what `llmstack install` wrote for the template."""
    assert cli("install").returncode == 0
    env = opencode_env(tmp_path / "home", project.opencode_json)
    result = subprocess.run([str(opencode_bin), "debug", "config"], cwd=project.root, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    resolved = json.loads(result.stdout)
    ours = json.loads(project.opencode_json.read_text())
    options = resolved["provider"]["llmstack"]["options"]
    assert options["headerTimeout"] == options["chunkTimeout"] == 590_000
    assert resolved["model"] == "llmstack/auto" and resolved["small_model"] == "llmstack/code-fast"
    for agent in ("plan", "plan-nofilter"):
        assert resolved["agent"][agent]["permission"] == ours["agent"][agent]["permission"]
    assert set(resolved["command"]) == {"review", "nofilter"}
    assert resolved["instructions"] == [str(project.agents_md)]
