"""The whole front door with the real opencode: configure a project, start it detached, run
``opencode run`` on the opencode.json the project generated, stop it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_STACK_INI, free_port, http, pid_alive, tiny_stack
from tests.real.test_opencode_real import opencode_bin, opencode_env  # noqa: F401 (the npm-installed client)

pytestmark = pytest.mark.real


def test_opencode_on_a_configured_detached_project(tmp_path: Path, opencode_bin: Path,
                                                   llama_server_bin: str) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    (project / ".llmstack").mkdir(parents=True)
    home.mkdir()
    port = free_port()
    # A project whose models.ini serves tiny tiers (as downloaded files) on its own port: this
    # is the front door's test (opencode on the real model: test_clients_real.py).
    (project / ".llmstack" / "models.ini").write_text(
        TINY_STACK_INI.read_text().replace("[DEFAULT]\n", f"[DEFAULT]\nrouter_port = {port}\n", 1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMSTACK_", "OPENCODE_"))}
    env.update(LLMSTACK_LLAMA_SERVER=llama_server_bin,
               **tiny_stack(tmp_path / "hub"))

    def llmstack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmstack", *args], cwd=project, env=env,
                              capture_output=True, text=True, timeout=120)

    configured = llmstack("configure")
    assert configured.returncode == 0, configured.stderr
    config = project / ".llmstack" / "opencode.json"
    provider = json.loads(config.read_text())["provider"]["llmstack"]
    assert provider["options"]["baseURL"] == f"http://127.0.0.1:{port}/v1"
    started = llmstack("start", "--detach")
    assert started.returncode == 0, started.stderr
    pid = json.loads((project / ".llmstack" / "daemon.json").read_text())["pid"]
    base = f"http://127.0.0.1:{port}"
    try:
        oc_env = opencode_env(home, config)
        result = subprocess.run([str(opencode_bin), "run", "--format", "json", "say", "hi"],
                                cwd=project, env=oc_env, capture_output=True, text=True,
                                timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        kinds = [e["type"] for e in events]
        assert "error" not in kinds and "text" in kinds, result.stdout[-2000:]
        reply = "".join(e["part"].get("text", "") for e in events if e["type"] == "text")
        assert reply.strip(), "opencode printed no reply"

        stack_events = json.loads(http("GET", base + "/events")[2])
        named = [(e["model"], e["tier"]) for e in stack_events if e["kind"] == "named"]
        assert ("fast", "fast") in named, f"no title request on the fast tier: {named}"
        assert any(e["kind"] == "routed" for e in stack_events), "no request through auto"
        children = [row["pid"] for row in json.loads(http("GET", base + "/running")[2])["running"]]
        assert children
    finally:
        stopped = llmstack("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for ours in (pid, *children):
        assert not pid_alive(ours), f"pid {ours} survived llmstack stop"
    assert not (project / ".llmstack" / "daemon.json").exists()
