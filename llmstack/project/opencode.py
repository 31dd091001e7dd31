"""``.llmstack/opencode.json``: opencode wired to the stack, derived from models.ini.

One provider, ``llmstack`` (``@ai-sdk/openai-compatible`` at the stack's ``/v1``),
listing ``auto`` and every tier with its limits; ``model`` is ``llmstack/auto``,
``small_model`` the fast tier. The build agent goes through ``auto``; the plan
and plan-nofilter agents use their tiers by name and may not edit, write or run
commands. No sampler settings ever appear: the stack applies them per tier.

Provider timeouts (opencode's ``headerTimeout`` / ``chunkTimeout``, milliseconds,
default 300000 each) are sized for the worst wait a request can see: the biggest
local tier loading from a cold, slow disk. See :func:`provider_timeouts_ms`.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Sequence
from typing import Any

from ..config.address import url_for
from ..config.schema import SERVING_ROLES, Stack, Tier
from ..models.hf_cache import size_gb
from ..settings import NO_OVERRIDES, OpencodeOverrides

PROVIDER_ID = "llmstack"
LOCAL_PROVIDER_NAME = "llmstack (local stack + auto router)"
SCHEMA = "https://opencode.ai/config.json"
DEFAULT_DISABLED_PROVIDERS = ("anthropic", "openai", "google", "openrouter", "xai", "groq",
                              "deepseek", "mistral", "cerebras", "azure", "perplexity",
                              "vercel", "morph")
READ_ONLY = {"edit": "deny", "write": "deny", "bash": "deny"}
DEFAULT_CONTEXT = 8192
DEFAULT_AUTO_OUTPUT = 16384
_LONG_OUTPUT_ROLES = ("agent", "plan-uncensored")
_REASONING_ROLES = ("agent", "plan-uncensored")
_ZERO_COST = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0}

OPENCODE_DEFAULT_TIMEOUT_MS = 300_000
COLD_READ_MB_PER_S = 100.0
"""A slow disk or network share with a cold page cache; local NVMe reads 20-50x faster."""
SWAP_AND_PROMPT_S = 120.0
"""Stopping the tier being swapped out, starting llama-server, and processing a long prompt."""


def provider_timeouts_ms(stack: Stack) -> dict[str, int]:
    """headerTimeout and chunkTimeout for this stack, in ms (opencode's unit).

    Until a tier is loaded the stack sends no response headers, so opencode's header
    timeout must outlast reading the biggest local GGUF (``size_gb``, else a ``gguf_path``
    file's size) at :data:`COLD_READ_MB_PER_S` plus :data:`SWAP_AND_PROMPT_S`: 45 GB -> 581 s
    -> 590 s.
    The chunk timeout gets the same value because a stream's first chunk can wait as
    long when headers come early; a dead upstream is reported in-band by the stack at
    once, so a long chunk timeout never hides a failure. Never below opencode's default.
    """
    biggest = max((size_gb(t) or 0.0 for t in stack.tiers if t.backend == "gguf"), default=0.0)
    seconds = biggest * 1024 / COLD_READ_MB_PER_S + SWAP_AND_PROMPT_S
    ms = max(OPENCODE_DEFAULT_TIMEOUT_MS, math.ceil(seconds / 10) * 10_000)
    return {"headerTimeout": ms, "chunkTimeout": ms}


def local_base_url(stack: Stack, port: int | None = None) -> str:
    """Where a client on this machine reaches the stack (a wildcard bind means loopback)."""
    return url_for(stack.host, port or stack.router_port) + "/v1"


def _tier_entry(tier: Tier) -> dict[str, Any]:
    output = tier.max_output_tokens or (32768 if tier.role in _LONG_OUTPUT_ROLES else 8192)
    entry: dict[str, Any] = {"name": tier.description or tier.name,
                             "limit": {"context": tier.ctx_size or DEFAULT_CONTEXT,
                                       "output": output},
                             "tool_call": True, "cost": dict(_ZERO_COST)}
    if tier.role in _REASONING_ROLES:
        entry["reasoning"] = True
    return entry


def auto_rungs(stack: Stack) -> list[Tier]:
    """The tiers ``auto`` can route to (fast, agent, ultra; hosted ones only with litellm)."""
    return [t for t in (stack.first_with_role(r) for r in ("fast", "agent", "ultra"))
            if t is not None and (t.backend == "gguf" or importlib.util.find_spec("litellm"))]


def auto_context(stack: Stack) -> int:
    """``auto``'s window for clients: the widest a rung offers (the router steps up to it)."""
    return max((t.ctx_size for t in auto_rungs(stack) or stack.tiers), default=0) or DEFAULT_CONTEXT


def _auto_entry(stack: Stack) -> dict[str, Any]:
    """``auto``: the widest window a rung offers (the router steps up to it), fast's output."""
    fast = stack.first_with_role("fast")
    names = "/".join(t.name for t in auto_rungs(stack))
    return {"name": f"Auto (router picks: {names})" if names else "Auto",
            "limit": {"context": auto_context(stack),
                      "output": (fast.max_output_tokens if fast else 0) or DEFAULT_AUTO_OUTPUT},
            "tool_call": True, "cost": dict(_ZERO_COST)}


def render(stack: Stack, base_url: str, instructions: Sequence[str],
           provider_name: str = LOCAL_PROVIDER_NAME,
           overrides: OpencodeOverrides = NO_OVERRIDES) -> dict[str, Any]:
    """The opencode.json object (keys in the order opencode users know from the original).

    ``overrides`` (from ``$OPENCODE_SHARE``, ``$OPENCODE_USERNAME``,
    ``$OPENCODE_DISABLED_PROVIDERS`` and ``$OPENCODE_INSTRUCTIONS``, which replaces
    ``instructions``: :attr:`llmstack.settings.Settings.opencode`) win over the defaults.
    """
    config: dict[str, Any] = {"$schema": SCHEMA,
                              "share": "disabled" if overrides.share is None else overrides.share,
                              "autoupdate": "notify"}
    if overrides.username:
        config["username"] = overrides.username
    config["disabled_providers"] = list(DEFAULT_DISABLED_PROVIDERS
                                        if overrides.disabled_providers is None
                                        else overrides.disabled_providers)
    config["instructions"] = list(instructions if overrides.instructions is None
                                  else overrides.instructions)
    models = {"auto": _auto_entry(stack)}
    # Embedding and rerank tiers cannot chat: they are no opencode models.
    models.update((t.name, _tier_entry(t)) for t in stack.tiers if t.role not in SERVING_ROLES)
    config["provider"] = {PROVIDER_ID: {
        "npm": "@ai-sdk/openai-compatible", "name": provider_name,
        "options": {"baseURL": base_url, "apiKey": "sk-no-key-required",
                    **provider_timeouts_ms(stack)},
        "models": models}}
    config["model"] = f"{PROVIDER_ID}/auto"
    fast = stack.first_with_role("fast")
    if fast is not None:
        config["small_model"] = f"{PROVIDER_ID}/{fast.name}"
    agents: dict[str, Any] = {}
    if stack.first_with_role("agent"):
        agents["build"] = {"model": f"{PROVIDER_ID}/auto"}
    for agent, role in (("plan", "plan"), ("plan-nofilter", "plan-uncensored")):
        tier = stack.first_with_role(role)
        if tier is not None:
            agents[agent] = {"model": f"{PROVIDER_ID}/{tier.name}", "permission": dict(READ_ONLY)}
    if agents:
        config["agent"] = agents
    commands: dict[str, Any] = {}
    if "plan" in agents:
        commands["review"] = {"template": "Review the following for trade-offs, risks, and "
                                          "follow-ups. Be concrete.\n\n$ARGUMENTS",
                              "description": "Architectural review via the planning model.",
                              "agent": "plan"}
    if "plan-nofilter" in agents:
        commands["nofilter"] = {"template": "$ARGUMENTS",
                                "description": "Route to the uncensored planning model.",
                                "agent": "plan-nofilter"}
    if commands:
        config["command"] = commands
    return config


def to_text(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2) + "\n"
