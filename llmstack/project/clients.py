"""The settings that point Claude Code and the Codex CLI at the stack, for
``llmstack configure --print claude|codex|codex-models`` (printed, never written).

* Claude Code: environment lines (``eval "$(llmstack configure --print claude)"``). Its
  requests go to ``auto`` (its small model to the fast tier), nothing else leaves the
  machine, and no output cap is set: the stack clamps each answer to the tier's
  (:mod:`llmstack.serving.output_cap`). Its window is named only when it is wide enough
  for Claude Code's own 32000-token output budget, because Claude Code refuses a prompt
  locally when prompt + that budget exceed it.
* Codex: a ``config.toml`` with a provider ``llmstack`` (``wire_api = "responses"``)
  and ``model = "auto"``, naming a model catalog (``codex-models``: ``auto`` and every
  chat tier with its window) so that Codex knows the models' metadata instead of warning
  "Model metadata for `auto` not found" and assuming a default.
* A stack that requires a key (``LLMSTACK_API_KEYS`` set where ``configure`` runs): the
  printed lines read it from the environment; no key is ever printed.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from ..config.schema import SERVING_ROLES, Stack
from ..settings import API_KEYS
from .opencode import DEFAULT_CONTEXT, auto_context

PLACEHOLDER_KEY = "sk-no-key-required"
CODEX_KEY_VARIABLE = "LLMSTACK_API_KEY"
"""The variable Codex sends as its bearer token when the stack requires a key."""
CLAUDE_OUTPUT_BUDGET = 32000
"""The ``max_tokens`` Claude Code asks for on every request (its default for a model it
does not know)."""
CODEX_CATALOG_NAME = "codex-models.json"
CODEX_INSTRUCTIONS = (
    "You are Codex, a coding agent working in the user's project through a local model "
    "stack. Read before you edit, keep changes small and focused, run the project's tests "
    "when you change code, and answer briefly.")


def claude_env(stack: Stack, root_url: str, keyed: bool = False) -> str:
    """Shell lines exporting what Claude Code needs to use the stack at ``root_url``;
    ``keyed``: the stack requires a key (its token is then read from ``$LLMSTACK_API_KEYS``,
    never printed)."""
    fast = stack.first_with_role("fast")
    window = auto_context(stack)
    token = (f'"${{{API_KEYS}%%,*}}"  # the first of ${API_KEYS}' if keyed
             else f"{PLACEHOLDER_KEY}  # any value: no {API_KEYS} where configure ran")
    lines = [
        f"# Claude Code -> the llmstack at {root_url}: "
        'eval "$(llmstack configure --print claude)"',
        f"export ANTHROPIC_BASE_URL={shlex.quote(root_url)}",
        f"export ANTHROPIC_AUTH_TOKEN={token}",
        "export ANTHROPIC_MODEL=auto",
        f"export ANTHROPIC_DEFAULT_HAIKU_MODEL={shlex.quote(fast.name if fast else 'auto')}"
        "  # its small, fast model",
        "export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1  # nothing leaves the machine",
    ]
    if window >= 2 * CLAUDE_OUTPUT_BUDGET:
        lines.append(f"export CLAUDE_CODE_MAX_CONTEXT_TOKENS={window}  # auto's widest window")
    return "\n".join(lines) + "\n"


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value)


def codex_toml(base_url: str, catalog: Path, keyed: bool = False) -> str:
    """Codex's ``config.toml`` for the stack's ``/v1`` at ``base_url``, reading the model
    catalog from ``catalog``; ``keyed``: the stack requires a key (sent from
    ``$LLMSTACK_API_KEY``)."""
    lines = [
        f"# Codex CLI -> the llmstack at {base_url}: in $CODEX_HOME/config.toml "
        "(default ~/.codex/config.toml),",
        f"# with the model catalog written by: llmstack configure --print codex-models > {catalog}",
        'model = "auto"',
        'model_provider = "llmstack"',
        f"model_catalog_json = {_toml(str(catalog))}",
        'web_search = "disabled"  # a hosted tool no local model serves',
        "",
        "[model_providers.llmstack]",
        'name = "llmstack"',
        f"base_url = {_toml(base_url)}",
        'wire_api = "responses"',
    ]
    if keyed:
        lines.append(f'env_key = "{CODEX_KEY_VARIABLE}"  # export {CODEX_KEY_VARIABLE}='
                     f'"${{{API_KEYS}%%,*}}" (a key of ${API_KEYS})')
    return "\n".join(lines) + "\n"


def _catalog_entry(slug: str, description: str, window: int) -> dict[str, Any]:
    """One model of Codex's catalog (every field its 0.171 parser requires)."""
    return {"slug": slug, "display_name": slug, "description": description,
            "base_instructions": CODEX_INSTRUCTIONS, "context_window": window,
            "supported_reasoning_levels": [], "shell_type": "shell_command",
            "visibility": "list", "supported_in_api": True, "priority": 1,
            "support_verbosity": False, "truncation_policy": {"mode": "tokens", "limit": 10000},
            "experimental_supported_tools": [], "include_skills_usage_instructions": False,
            "include_apps_usage_instructions": False, "include_plugin_usage_instructions": False,
            "supports_reasoning_summaries": False, "supports_parallel_tool_calls": False,
            "input_modalities": ["text"]}


def codex_catalog(stack: Stack) -> str:
    """Codex's model catalog: ``auto`` (its widest window) and every chat tier."""
    models = [_catalog_entry("auto", "llmstack's router: picks a tier per request",
                             auto_context(stack))]
    models += [_catalog_entry(t.name, t.description or t.name, t.ctx_size or DEFAULT_CONTEXT)
               for t in stack.tiers if t.role not in SERVING_ROLES]
    return json.dumps({"models": models}, indent=1) + "\n"
