"""The real opencode through a 3 s cold load: it waits on the kept-alive stream, no retry."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Server
from tests.real.test_opencode_real import opencode_bin, opencode_project  # noqa: F401  (the fixture)
from tests.ui.conftest import LOAD_MS, slow_config


def test_opencode_waits_through_a_cold_load_without_retrying(
        tmp_path: Path, swapper: Callable[..., Server], opencode_bin: Path) -> None:
    server = swapper(slow_config(send_loading_state=True))
    project, env = opencode_project(tmp_path, server.base, "stack",
                                    {"slow": (8192, 32), "quick": (8192, 32)}, "slow", "quick")
    result = subprocess.run([str(opencode_bin), "run", "--format", "json", "say", "hi"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    kinds = [e["type"] for e in events]
    assert result.returncode == 0, result.stderr[-2000:]
    assert "error" not in kinds and "text" in kinds
    assert any("tok tok" in json.dumps(e) for e in events if e["type"] == "text")
    done = [e for e in json.loads(server.get("/events")[2])
            if e["kind"] == "request_done" and e["model"] == "slow"]
    assert len(done) == 1, done  # one request: opencode never gave up and re-sent it
    assert done[0]["status"] == 200 and done[0]["ms"] >= LOAD_MS
