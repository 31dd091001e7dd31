"""Fixtures for the project verbs: an isolated project directory and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmstack.project.paths import Project
from tests.conftest import Server, start_llmstack

_LEAKY_ENV = ("LLMSTACK_REMOTE_URL", "LLMSTACK_USE_NEXT", "LLMSTACK_MODELS_INI", "LLMSTACK_WORK_DIR",
              "LLMSTACK_CHANNEL", "OPENCODE_CONFIG_DIR", "OPENCODE_SHARE", "OPENCODE_USERNAME",
              "OPENCODE_DISABLED_PROVIDERS", "OPENCODE_INSTRUCTIONS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No channel or opencode variable of the developer's shell reaches a test."""
    for name in _LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """An empty project directory, also the current directory."""
    root = tmp_path / "proj"
    root.mkdir()
    monkeypatch.chdir(root)
    return Project(root)


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(project: Project) -> Iterator[Cli]:
    """Run ``python -m llmstack <args>`` in the project, as a user would."""
    def run(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        full = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
        return subprocess.run([sys.executable, "-m", "llmstack", *args], cwd=cwd or project.root,
                              env={**full, **(env or {})}, capture_output=True, text=True,
                              timeout=60, check=False)
    yield run


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its content (to prove nothing was written)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def serve_in(cwd: Path, port: int, log: Path, env: dict[str, str], *args: str,
             ready_path: str = "/v1/models", timeout: float = 60,
             drop_env: tuple[str, ...] = ()) -> Server:
    """``llmstack serve --port P [args]`` run in ``cwd`` (so it finds that project's .llmstack),
    without the environment's ``drop_env``."""
    return start_llmstack(log, *args, env=env, port=port, ready_path=ready_path,
                          timeout=timeout, cwd=cwd, drop_env=_LEAKY_ENV + drop_env)
