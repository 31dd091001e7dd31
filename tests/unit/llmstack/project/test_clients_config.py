"""What points Claude Code and Codex at a stack (pure: llmstack.project.clients)."""

from __future__ import annotations

import json
import shlex
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
