"""The whole front door with the real opencode: configure a project, start it detached, run
``opencode run`` on the opencode.json the project generated, stop it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmstack.config.demo import demo_stack, demo_text
from llmstack.models.demo import demo_files
from llmstack.settings import Settings
from tests.conftest import free_port, http, pid_alive
from tests.real.test_opencode_real import (  # noqa: F401 (opencode_bin: the npm-installed client)
    opencode_bin,
    opencode_env,
    opencode_run,
)

pytestmark = pytest.mark.real


def _hub_cache(directory: Path, model: Path) -> Path:
    """A Hugging Face hub cache holding the demo's files as if downloaded (blobs + refs):
    ``model`` (SmolLM2) for the chat tiers, the tiny embedding and rerank models."""
    commit = "0" * 40
    stack = demo_stack()
    files = demo_files(stack, Settings.read().cache_dir, model)
    for tier in stack.tiers:
        path = files[tier.name]
        assert path is not None and tier.hf_repo and tier.hf_file
        repo = directory / f"models--{tier.hf_repo.replace('/', '--')}"
        snapshot = repo / "snapshots" / commit
        if (snapshot / tier.hf_file).exists():  # the chat tiers share one file
            continue
        for sub in ("refs", "blobs", snapshot):
            (repo / sub).mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        blob = repo / "blobs" / f"{tier.name}-blob"
        try:  # a blob is a file in the cache (a link out of it is refused)
            os.link(path, blob)
        except OSError:
            shutil.copy(path, blob)
        (snapshot / tier.hf_file).symlink_to(os.path.relpath(blob, snapshot))
    return directory


def test_opencode_on_a_configured_detached_project(tmp_path: Path, opencode_bin: Path,
                                                   llama_server_bin: str,
                                                   smollm2_gguf: Path) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    (project / ".llmstack").mkdir(parents=True)
    home.mkdir()
    port = free_port()
    # A project whose models.ini is the demo's (SmolLM2 as a downloaded file) on its own port.
    (project / ".llmstack" / "models.ini").write_text(
        demo_text().replace("[DEFAULT]\n", f"[DEFAULT]\nrouter_port = {port}\n", 1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMSTACK_", "OPENCODE_"))}
    env.update(LLMSTACK_LLAMA_SERVER=llama_server_bin,
               HF_HUB_CACHE=str(_hub_cache(tmp_path / "hub", smollm2_gguf)))

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
        opencode_run(opencode_bin, project, opencode_env(home, config), timeout=180)

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
