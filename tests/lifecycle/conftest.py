"""Fixtures for the lifecycle tests: a project directory and the real CLI in subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swapper.small_files import read_json
from tests.conftest import pid_alive, wait_until

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / ".llmstack").mkdir(parents=True)
    return root


@pytest.fixture
def cli_env() -> dict[str, str]:
    """The test's environment without the user's llmstack/opencode variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LLMSTACK_", "OPENCODE_"))}


@pytest.fixture
def cli(project: Path, cli_env: dict[str, str]) -> Iterator[Cli]:
    """Run ``llmstack ARGS`` in the project; stops (by recorded pid) what it left running."""

    def run(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmstack", *args], cwd=cwd or project,
                              env={**cli_env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)

    yield run
    record = project / ".llmstack" / "daemon.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        pid = int(read_json(record)["pid"])  # bounded: tests leave odd files there
        if pid > 0 and pid_alive(pid) and Path(f"/proc/{pid}/cmdline").read_bytes().count(b"llmstack"):
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not pid_alive(pid), 15, "the leftover stack to exit")


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start helper processes (decoys, port holders); killed by pid after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def run(argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
