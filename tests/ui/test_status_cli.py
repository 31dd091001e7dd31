"""`llmstack status` shows the facts of /api/state: queue, memory against the budget, decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import FAKE_UPSTREAM, start_llmstack, stop_server


def test_status_shows_queue_memory_recent_decisions_and_swaps(tmp_path: Path) -> None:
    fake = tmp_path / "fake-llama-server"
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_UPSTREAM}" "$@"\n')
    fake.chmod(0o755)
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
