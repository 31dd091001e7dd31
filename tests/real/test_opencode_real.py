"""The real opencode client (npm ``opencode-ai``) through ``llmstack serve --demo``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llmstack.settings import Settings
from tests.conftest import start_llmstack, stop_server

pytestmark = pytest.mark.real
OPENCODE_VERSION = "1.18.33"


@pytest.fixture(scope="session")
def opencode_bin() -> Path:
    """opencode from the npm registry, installed once into the cache (about 7 s)."""
    prefix = Settings.read().cache_dir / "opencode" / OPENCODE_VERSION
    binary = prefix / "node_modules" / ".bin" / "opencode"
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            (pytest.fail if os.environ.get("CI") else pytest.skip)("npm is needed to install opencode")
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                        f"opencode-ai@{OPENCODE_VERSION}"], check=True, capture_output=True, timeout=300)
    return binary


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


FRANCE = "What is the capital of France?"


def opencode_run(binary: Path, project: Path, env: dict[str, str],
                 timeout: float) -> tuple[list[dict[str, Any]], str]:
    """``opencode run`` asking :data:`FRANCE` until the reply names Paris, at most three times
    (SmolLM2 did 18 times in 19 under opencode's ~7,600-token prompt; a retry reads it from
    the prompt cache, about 10 s); its events and reply text. Every run must exit 0 with no
    error event."""
    for _ in range(3):
        result = subprocess.run([str(binary), "run", "--format", "json", FRANCE], cwd=project,
                                env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stderr[-2000:]
        events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        kinds = [e["type"] for e in events]
        assert "error" not in kinds and "text" in kinds, result.stdout[-2000:]
        reply = "".join(e["part"].get("text", "") for e in events if e["type"] == "text")
        print(f"opencode's reply: {reply!r}")
        if "Paris" in reply:
            break
    assert "Paris" in reply, reply
    return events, reply


def test_opencode_run_gets_an_answer_through_the_auto_router(tmp_path: Path, opencode_bin: Path,
                                                             llama_server_bin: str,
                                                             smollm2_gguf: Path) -> None:
    """On the demo's SmolLM2 (``smollm2_gguf`` puts it where the demo looks)."""
    server = start_llmstack(tmp_path / "serve.log", "--demo",
                            env={"LLMSTACK_LLAMA_SERVER": llama_server_bin})
    project, env = opencode_project(tmp_path, server.base, "llmstack",
                                    {"auto": (8192, 64), "fast": (8192, 64)}, "auto", "fast")
    try:
        events, _ = opencode_run(opencode_bin, project, env, timeout=120)
        finish = next(e for e in events if e["type"] == "step_finish")
        assert finish["part"]["tokens"]["input"] > 0  # the usage chunk reached the client
        routed = [e for e in json.loads(server.get("/events")[2]) if e["kind"] == "routed"]
        assert routed, "opencode's main request went through the auto router"
    finally:
        stop_server(server)
