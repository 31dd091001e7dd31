"""`llmstack status` shows the facts of /api/state: queue, memory against the budget, decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import (
    FAKE_UPSTREAM,
    TINY_STACK_INI,
    free_port,
    http,
    start_llmstack,
    stop_server,
    tiny_stack,
)


def fake_llama_server(tmp_path: Path) -> Path:
    fake = tmp_path / "fake-llama-server"
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_UPSTREAM}" "$@"\n')
    fake.chmod(0o755)
    return fake


def test_status_shows_queue_memory_recent_decisions_and_swaps(tmp_path: Path) -> None:
    fake = fake_llama_server(tmp_path)
    server = start_llmstack(tmp_path / "serve.log", "--demo",
                            env={"LLMSTACK_LLAMA_SERVER": str(fake)})
    project = tmp_path / "project"
    (project / ".llmstack").mkdir(parents=True)
    (project / ".llmstack" / "default-channel").write_text(f"external {server.base}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMSTACK_", "OPENCODE_"))}
    try:
        assert server.post("/v1/chat/completions", {
            "model": "auto", "messages": [{"role": "user", "content": "hello there"}]})[0] == 200

        def status(*flags: str) -> str:
            done = subprocess.run([sys.executable, "-m", "llmstack", "status", *flags],
                                  cwd=project, env=env, capture_output=True, text=True,
                                  timeout=30, check=False)
            assert done.returncode == 0, done.stderr
            return done.stdout

        doc = json.loads(status("--json"))
        assert doc["decisions"][-1]["status"] == 200 and doc["decisions"][-1]["asked"] == "auto"
        assert doc["memory"]["budget_mb"] == 1024
        fast = next(t for t in doc["tiers"] if t["name"] == "fast")
        assert fast["state"] == "ready" and fast["in_flight"] == 0 and fast["queued"] == 0
        text = status()
        assert "IN  QUEUE" in text and "memory [" in text and "of 1024 MB" in text
        assert "recent " in text and "swap     fast evicting nothing" in text
    finally:
        stop_server(server)


def test_status_sees_a_foreground_serve_at_the_projects_address(tmp_path: Path) -> None:
    """The README's ``llmstack serve`` records no pid; ``status`` beside it said "stopped"."""
    project, port = tmp_path / "project", free_port()
    (project / ".llmstack").mkdir(parents=True)
    (project / ".llmstack" / "models.ini").write_text(
        TINY_STACK_INI.read_text().replace("[DEFAULT]\n", f"[DEFAULT]\nrouter_port = {port}\n", 1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMSTACK_", "OPENCODE_"))}
    server = start_llmstack(tmp_path / "serve.log", port=port, cwd=project, env={
        "LLMSTACK_LLAMA_SERVER": str(fake_llama_server(tmp_path)), **tiny_stack(tmp_path / "hub")})

    def status(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmstack", "status", *flags], cwd=project,
                              env=env, capture_output=True, text=True, timeout=30, check=False)
    try:
        done = status("--json")
        assert done.returncode == 0, done.stdout + done.stderr
        doc = json.loads(done.stdout)
        assert (doc["state"], doc["url"], doc["pid"]) == ("running", server.base, server.popen.pid)
        assert doc["unrecorded"] is True and {t["name"] for t in doc["tiers"]} >= {"fast", "agent"}
        text = status().stdout
        assert text.startswith(f"llmstack: running (pid {server.popen.pid}, up ")
        assert ("not started by `llmstack start` here (no pid record): a `llmstack serve` in "
                f"{project} answers") in text
        assert "OPENCODE_CONFIG" not in text
        stopped = subprocess.run([sys.executable, "-m", "llmstack", "stop"], cwd=project, env=env,
                                 capture_output=True, text=True, timeout=30, check=False)
        assert stopped.returncode == 0, stopped.stderr  # it names what it leaves running
        assert (f"[=] not started by `llmstack start` here: the server at {server.base} (pid "
                f"{server.popen.pid}, a foreground `llmstack serve`?) is left running") in stopped.stdout
        assert server.popen.poll() is None and http("GET", server.base + "/health")[0] == 200
    finally:
        stop_server(server)
    done = status("--json")  # and once it is gone: stopped, as before
    assert done.returncode == 3 and json.loads(done.stdout)["state"] == "stopped"
