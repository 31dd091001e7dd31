"""The real opencode client (npm ``opencode-ai``, pinned in :mod:`tests.real.npm_clients`):
its fixture and an isolated, offline environment for it. opencode with the generated config
on the real model runs in ``tests/real/test_clients_real.py`` (beside Claude Code and Codex,
on one stack); through a detached project stack in ``test_opencode_project_real.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.real.npm_clients import OPENCODE


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
