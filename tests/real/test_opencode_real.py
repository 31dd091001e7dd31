"""The real opencode client (npm ``opencode-ai``) through ``llmstack serve --demo``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import start_llmstack, stop_server
from tests.real.npm_clients import OPENCODE

pytestmark = pytest.mark.real


@pytest.fixture(scope="session")
def opencode_bin() -> Path:
    """opencode from the npm registry, pinned, installed once into the cache (about 7 s)."""
    return OPENCODE.binary()


def opencode_env(home: Path, config: Path) -> dict[str, str]:
    """An isolated, offline opencode reading ``config`` (its own HOME and XDG dirs)."""
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local/share"), "XDG_CACHE_HOME": str(home / ".cache"),
            "OPENCODE_CONFIG": str(config), "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_SHARE": "1",
            "npm_config_registry": "http://127.0.0.1:9/"}  # its plugin install stays offline


def opencode_project(tmp_path: Path, base: str, provider: str,
                     models: dict[str, tuple[int, int]], model: str,
                     small_model: str) -> tuple[Path, dict[str, str]]:
    """A project whose opencode.json names ``provider`` at ``base`` with ``models`` (id ->
    context, output limit), and the isolated environment of an opencode reading it."""
    project = tmp_path / "project"
    project.mkdir()
    config = project / "opencode.json"
    config.write_text(json.dumps({
        "$schema": "https://opencode.ai/config.json",
        "provider": {provider: {
            "npm": "@ai-sdk/openai-compatible", "name": provider,
            "options": {"baseURL": f"{base}/v1", "apiKey": "sk-no-key-required"},
            "models": {name: {"name": name, "limit": {"context": context, "output": output}}
                       for name, (context, output) in models.items()}}},
        "model": f"{provider}/{model}", "small_model": f"{provider}/{small_model}",
        "autoupdate": False, "share": "disabled"}))
    return project, opencode_env(tmp_path / "home", config)


def test_opencode_run_gets_an_answer_through_the_auto_router(tmp_path: Path, opencode_bin: Path,
                                                             llama_server_bin: str) -> None:
    server = start_llmstack(tmp_path / "serve.log", "--demo",
                            env={"LLMSTACK_LLAMA_SERVER": llama_server_bin})
    project, env = opencode_project(tmp_path, server.base, "llmstack",
                                    {"auto": (65536, 64), "fast": (8192, 32)}, "auto", "fast")
    try:
        result = subprocess.run([str(opencode_bin), "run", "--format", "json", "say", "hi"],
                                cwd=project, env=env, capture_output=True, text=True, timeout=120)
        events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        kinds = [e["type"] for e in events]
        assert result.returncode == 0, result.stderr[-2000:]
        assert "error" not in kinds and "text" in kinds
        finish = next(e for e in events if e["type"] == "step_finish")
        assert finish["part"]["tokens"]["input"] > 0  # the usage chunk reached the client
        routed = [e for e in json.loads(server.get("/events")[2]) if e["kind"] == "routed"]
        assert routed, "opencode's main request went through the auto router"
    finally:
        stop_server(server)
