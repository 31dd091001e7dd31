"""What points Claude Code and Codex at a stack (pure: llmstack.project.clients)."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from llmstack.config.ini import parse_stack
from llmstack.project.clients import claude_env, codex_catalog, codex_toml
from tests.conftest import toml_loads

NARROW = """\
[small]
hf_repo = a/b
hf_file = c.gguf
ctx_size = 8192

[odd]
hf_repo = a/b
hf_file = d.gguf

[vectors]
role = embed
hf_repo = a/b
hf_file = e.gguf
"""


def exports(text: str) -> dict[str, str]:
    return dict(shlex.split(line, comments=True)[1].split("=", 1)
                for line in text.splitlines() if line.startswith("export "))


def test_a_window_narrower_than_claude_codes_output_budget_is_not_named() -> None:
    """Claude Code refuses a prompt locally when it plus the 32000 tokens it asks for exceed
    the window it is told, so a narrow stack's window is left unsaid (it assumes a large
    one; the stack clamps each answer and refuses what does not fit)."""
    env = exports(claude_env(parse_stack(NARROW), "http://h:1"))
    assert "CLAUDE_CODE_MAX_CONTEXT_TOKENS" not in env
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "auto"  # no fast tier
    assert env["ANTHROPIC_BASE_URL"] == "http://h:1"


def test_the_catalog_has_auto_and_every_chat_tier_with_its_window() -> None:
    catalog = json.loads(codex_catalog(parse_stack(NARROW)))["models"]
    assert [(m["slug"], m["context_window"]) for m in catalog] == [
        ("auto", 8192), ("small", 8192), ("odd", 8192)]  # no ctx_size: opencode's default too
    assert all(m["base_instructions"] and m["supported_in_api"] for m in catalog)


def test_the_config_toml_quotes_what_it_names() -> None:
    config = toml_loads(codex_toml('http://h:1/v1', Path('/a "b"/c.json')))
    assert config["model_catalog_json"] == '/a "b"/c.json'
    assert config["model_providers"]["llmstack"]["wire_api"] == "responses"


def test_a_required_key_is_read_from_the_environment_never_printed() -> None:
    """With LLMSTACK_API_KEYS where configure runs, Claude Code's token is the first of
    them (expanded by the shell that evals the lines) and Codex sends $LLMSTACK_API_KEY;
    without, a placeholder and no env_key (Codex then sends no Authorization)."""
    stack = parse_stack(NARROW)
    keyed = claude_env(stack, "http://h:1", keyed=True)
    assert exports(keyed)["ANTHROPIC_AUTH_TOKEN"] == "${LLMSTACK_API_KEYS%%,*}"
    env = {"LLMSTACK_API_KEYS": "team-key,other", "PATH": "/usr/bin:/bin"}
    shown = subprocess.run(["sh", "-c", keyed + 'printf %s "$ANTHROPIC_AUTH_TOKEN"'],
                           env=env, capture_output=True, text=True, check=True).stdout
    assert shown == "team-key"
    assert exports(claude_env(stack, "http://h:1"))["ANTHROPIC_AUTH_TOKEN"] == "sk-no-key-required"
    provider = toml_loads(codex_toml("http://h:1/v1", Path("/c.json"), keyed=True))
    assert provider["model_providers"]["llmstack"]["env_key"] == "LLMSTACK_API_KEY"
    assert "env_key" not in toml_loads(codex_toml("http://h:1/v1", Path("/c.json")))[
        "model_providers"]["llmstack"]
