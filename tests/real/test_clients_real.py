"""Claude Code, Codex and opencode (pinned npm installs) through a real-model stack with
``auto``: each configured from what ``llmstack configure`` prints or writes, offline, with
an isolated home and no client-side output cap (the stack clamps every answer to the
tier's ``max_output_tokens``), exits 0 with an answer, and the stack's events show its
requests routed.

The clients' prompts are slimmed to what SmolLM2 reads in seconds on a CPU (its counts, by
benchmarks/bench_estimate.py): Claude Code ``--bare --tools "" --system-prompt ...`` (about 30
tokens), Codex without plugins, goals, agents and bundled skills (about 320), opencode's build
agent with a one-line prompt and no tools (about 510, and 600 for its title request). Their
default prompts read 2,600 to 4,600 tokens: 30 to 90 s each here. The stack: one ``fast``
tier (a 4096-token window, which holds every slim prompt with room to answer; a 48-token cap,
so a rambling answer ends soon; greedy sampling, so "Paris" is stable). About 35 s in all.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Server, free_port, start_llmstack, stop_server, toml_loads
from tests.real.npm_clients import CLAUDE_CODE, CODEX, OPENCODE
from tests.real.smollm2_stack import models_ini, smollm2_hub  # noqa: F401  (a fixture)
from tests.real.test_opencode_real import opencode_env

pytestmark = pytest.mark.real
QUESTION = "What is the capital of France? Answer in one word."
CAP = 48
CLAUDE_SLIM = ("--bare", "--tools", "", "--system-prompt", "You are a helpful assistant.")
"""Claude Code's slim prompt: no tools, a one-line system prompt."""
CLAUDE_QUIET = {"CLAUDE_CODE_MAX_RETRIES": "1"}
CODEX_NO_RETRIES = "request_max_retries = 0\nstream_max_retries = 0\n"
"""Appended to the printed config.toml, which ends in the provider's table: fail fast."""
CODEX_SLIM = ("\n[features]\nplugins = false\ngoals = false\n\n[agents]\nenabled = false\n"
              "\n[skills.bundled]\nenabled = false\n")
"""Codex's slimmer prompt: no plugin sync, goals, sub-agents or bundled skills."""
OPENCODE_SLIM = {"agent": {"build": {
    "prompt": "You are a helpful assistant. Answer briefly.",
    "tools": dict.fromkeys(("bash", "edit", "glob", "grep", "read", "skill", "task",
                            "todowrite", "webfetch", "write"), False)}}}
"""A project's own opencode.json (opencode merges it over the generated one): the build
agent reads a one-line prompt and has no tools."""


@dataclass
class Stack:
    """The running stack and the project it serves."""

    server: Server
    project: Path

    def configure(self, *args: str) -> str:
        """``llmstack configure ARGS`` in the project, as a user runs it; its stdout."""
        result = subprocess.run([sys.executable, "-m", "llmstack", "configure", *args],
                                cwd=self.project, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr
        return result.stdout

    def done(self, path: str) -> list[dict[str, Any]]:
        """The answered requests on ``path`` that ``auto`` routed."""
        events = json.loads(self.server.get("/events")[2])
        return [e for e in events if e["kind"] == "request_done" and e["path"] == path
                and e.get("asked") == "auto"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: str,
          smollm2_hub: Path) -> Iterator[Stack]:
    """A project whose models.ini has one ``fast`` tier serving SmolLM2 (greedy, so the
    answers are stable) on a free port, and its stack."""
    project = tmp_path_factory.mktemp("project")
    port = free_port()
    (project / ".llmstack").mkdir()
    (project / ".llmstack" / "models.ini").write_text(models_ini(
        fast={"role": "fast", "ctx_size": 4096, "max_output_tokens": CAP, "sampler": "temp=0"}
    ).replace("[DEFAULT]\n", f"[DEFAULT]\nrouter_port = {port}\n"))
    server = start_llmstack(project / "serve.log", port=port, cwd=project,
                            env={"LLMSTACK_LLAMA_SERVER": llama_server_bin,
                                 "HF_HUB_CACHE": str(smollm2_hub)})
    yield Stack(server, project)
    stop_server(server)


def exports(text: str) -> dict[str, str]:
    """The variables ``export NAME=VALUE`` lines set."""
    return dict(shlex.split(line, comments=True)[1].split("=", 1)
                for line in text.splitlines() if line.startswith("export "))


def test_claude_code_answers_through_auto(stack: Stack, tmp_path: Path) -> None:
    claude = CLAUDE_CODE.binary()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **exports(
        stack.configure("--print", "claude")), **CLAUDE_QUIET}
    assert "CLAUDE_CODE_MAX_OUTPUT_TOKENS" not in env
    result = subprocess.run([str(claude), *CLAUDE_SLIM, "--no-session-persistence",
                             "-p", QUESTION, "--output-format", "json"],
                            cwd=stack.project, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    answer = json.loads(result.stdout)
    assert not answer["is_error"] and "Paris" in answer["result"], answer
    [done] = stack.done("/v1/messages")
    assert done["status"] == 200 and done["model"] == "fast"


def test_codex_answers_through_auto_and_knows_the_models(stack: Stack, tmp_path: Path) -> None:
    codex = CODEX.binary()
    home = tmp_path / "codex"
    home.mkdir()
    config = stack.configure("--print", "codex")
    catalog = Path(toml_loads(config)["model_catalog_json"])
    catalog.write_text(stack.configure("--print", "codex-models"))
    (home / "config.toml").write_text(config + CODEX_NO_RETRIES + CODEX_SLIM)
    assert toml_loads((home / "config.toml").read_text())["model_providers"]["llmstack"][
        "request_max_retries"] == 0
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "CODEX_HOME": str(home)}
    result = subprocess.run([str(codex), "exec", "--skip-git-repo-check", "--ephemeral",
                             "--strict-config", "--json", QUESTION], cwd=stack.project, env=env,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    items = [json.loads(line)["item"] for line in result.stdout.splitlines()
             if line.startswith("{") and json.loads(line)["type"] == "item.completed"]
    # no "Model metadata for `auto` not found" error item: the catalog names auto
    assert [i["type"] for i in items] == ["agent_message"], items
    assert "Paris" in items[0]["text"]
    [done] = stack.done("/v1/responses")
    assert done["status"] == 200 and done["model"] == "fast"


def test_opencode_answers_through_auto_with_the_generated_config(stack: Stack,
                                                                 tmp_path: Path) -> None:
    opencode = OPENCODE.binary()
    stack.configure()  # writes .llmstack/opencode.json and AGENTS.md
    (stack.project / "opencode.json").write_text(json.dumps(OPENCODE_SLIM))
    env = opencode_env(tmp_path / "home", stack.project / ".llmstack" / "opencode.json")
    result = subprocess.run([str(opencode), "run", "--format", "json", QUESTION],
                            cwd=stack.project, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert "error" not in [e["type"] for e in events]
    assert "Paris" in "".join(e["part"]["text"] for e in events if e["type"] == "text")
    finish = next(e for e in events if e["type"] == "step_finish")
    assert finish["part"]["tokens"]["input"] > 0  # the usage chunk reached the client
    assert [d["status"] for d in stack.done("/v1/chat/completions")] == [200]
