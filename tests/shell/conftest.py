"""Fixtures for the shell-hook tests: a project, a place outside it, and a shell runner."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from llmstack.config.demo import demo_text

ORIGINAL = {"OPENCODE_CONFIG": "/home/me/opencode.json",
            "LLMSTACK_MODELS_INI": "/home/me/o'dd path/models.ini"}
"""Variables the user had set before: the hook must put them back exactly."""

Shell = Callable[[str, str], str]


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """``my proj/`` (with .llmstack/models.ini on port 12345) and ``outside/``."""
    root = tmp_path / "my proj"
    (root / ".llmstack").mkdir(parents=True)
    (root / "src" / "deep").mkdir(parents=True)
    (root / ".llmstack" / "models.ini").write_text(
        demo_text().replace("[DEFAULT]\n", "[DEFAULT]\nrouter_port = 12345\n", 1))
    (tmp_path / "outside").mkdir()
    (tmp_path / "home").mkdir()
    return {"root": root, "outside": tmp_path / "outside", "home": tmp_path / "home"}


@pytest.fixture
def shell(layout: dict[str, Path]) -> Shell:
    """Run ``script`` on the stdin of an interactive ``name`` shell; returns its stdout."""

    def run(name: str, script: str) -> str:
        binary = shutil.which(name)
        if binary is None:
            (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{name} is not installed")
        argv = {"bash": [binary, "--norc", "--noprofile", "-i"], "zsh": [binary, "-f", "-i"],
                "fish": [binary, "--no-config", "-i"]}[name]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMSTACK_", "OPENCODE_"))}
        env.update(ORIGINAL, HOME=str(layout["home"]), PS1="P> ", TERM="dumb")
        done = subprocess.run(argv, input=script, cwd=layout["outside"], env=env,
                              capture_output=True, text=True, timeout=60)
        return done.stdout
    return run
