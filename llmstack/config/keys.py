"""The keys of models.ini: which section takes which, and how each value is checked.

Each converter takes the raw (comment-stripped) value and returns the typed value, or
raises ValueError with a message that is shown after ``key:``. Examples in the messages
are the schema's defaults (:mod:`llmstack.config.schema`).
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .address import DEFAULT_PORT
from .hub_names import CONTROL, check_repo_file, check_repo_id, shown
from .schema import (
    BACKENDS,
    CACHE_TYPES,
    RESERVED_NAMES,
    ROLES,
    SAMPLER_NAMES,
    STACK_LOG_NAME,
    TIER_NAME_MAX,
    Stack,
)

_TIER_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{TIER_NAME_MAX - 1}}}")
"""A tier name is also a file name (``<tier>.log``): letters, digits, ``-``, ``_``, ``.``."""

Converter = Callable[[str], Any]
_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_BOOLEANS = {
    "1": True,
    "yes": True,
    "true": True,
    "on": True,
    "0": False,
    "no": False,
    "false": False,
    "off": False,
}
_ROPE = re.compile(
    rf"yarn\s*\(\s*scale\s*=\s*({_DECIMAL.pattern})\s*,\s*orig_ctx\s*=\s*([0-9]+)\s*\)",
    re.IGNORECASE,
)
_ENV_REF = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
PATH_MAX = 4096


def _whole(unit: str, example: int) -> Converter:
    def convert(raw: str) -> int:
        if not _WHOLE.fullmatch(raw):
            raise ValueError(f"{raw!r}: expected a whole number of {unit} such as {example}")
        return int(raw)

    return convert


def _port(raw: str) -> int:
    if not _WHOLE.fullmatch(raw) or not 0 < int(raw) < 65536:
        raise ValueError(f"{raw!r}: expected a TCP port (1-65535) such as {DEFAULT_PORT}")
    return int(raw)


def _threads(raw: str) -> int:
    if not re.fullmatch(r"-1|[0-9]+", raw):
        raise ValueError(
            f"{raw!r}: expected a thread count such as 8, or -1 to let llama-server pick"
        )
    return int(raw)


def _gigabytes(raw: str) -> float:
    if not _DECIMAL.fullmatch(raw):
        raise ValueError(f"{raw!r}: expected a size in GB such as 2.5")
    return float(raw)


def _flag(raw: str) -> bool:
    try:
        return _BOOLEANS[raw.lower()]
    except KeyError:
        raise ValueError(f"{raw!r}: expected true or false") from None


def _cache_type(raw: str) -> str:
    if raw not in CACHE_TYPES:
        raise ValueError(f"unknown KV cache type {raw!r}{closest(raw, CACHE_TYPES)}; "
                         f"llama-server accepts {', '.join(CACHE_TYPES)}")
    return raw


def _text(raw: str) -> str | None:
    return raw or None


def resolve_reference(raw: str, variables: Mapping[str, str]) -> str | None:
    """``$NAME`` / ``${NAME}`` replaced by that variable (None if unset); other text as it is."""
    ref = _ENV_REF.fullmatch(raw)
    return variables.get(ref.group(1) or ref.group(2)) if ref else _text(raw)


def _url(raw: str) -> str:
    url = raw.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/@]+(?:/\S*)?", url):
        raise ValueError(f"{raw!r}: expected an http:// or https:// address such as "
                         "http://10.0.0.7:10101 (no credentials in it)")
    return url


def _urls(raw: str) -> tuple[str, ...]:
    items = tuple(_url(item) for item in re.split(r"[\s,]+", raw.strip(" \t\n,")) if item)
    if not items:
        raise ValueError("empty backends; list base URLs separated by commas, or remove the line")
    if len(set(items)) < len(items):
        raise ValueError(f"{raw!r} lists the same backend twice")
    return items


def closest(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _backend(raw: str) -> str:
    if raw not in BACKENDS:
        raise ValueError(f"unknown backend {raw!r} (supported: {', '.join(BACKENDS)})")
    return raw


def _role(raw: str) -> str:
    known = ", ".join(ROLES)
    if not raw:
        raise ValueError(f"empty role; use one of {known}, or remove the line")
    if raw not in ROLES:
        raise ValueError(f"unknown role {raw!r}{closest(raw, ROLES)}; known roles: {known}")
    return raw


def _check_name(name: str, what: str) -> None:
    if not name:
        raise ValueError(f"empty {what}")
    if any(c.isspace() for c in name):
        raise ValueError(f"{what} {name!r} contains whitespace")
    if name in RESERVED_NAMES:
        raise ValueError(f"{what} {name!r} is reserved for the router")


def check_tier_name(name: str) -> None:
    """A tier name is also a file name (``<tier>.log``)."""
    _check_name(name, "tier name")
    if not _TIER_NAME.fullmatch(name):
        raise ValueError(f"tier name {name!r} is not a name: use letters, digits, '-', '_' and "
                         f"'.' (not first), at most {TIER_NAME_MAX} characters")
    if name.lower() == STACK_LOG_NAME:
        raise ValueError(f"tier name {name!r} is reserved: the stack's own log is "
                         f"{STACK_LOG_NAME}.log")


def _hub_value(check: Callable[[str], str]) -> Converter:
    """A value checked by the hub's naming rules (it becomes part of a cache path)."""

    def convert(raw: str) -> str | None:
        return check(raw) if raw else None

    return convert


def _local_path(raw: str) -> str | None:
    """A file on this machine: absolute, or relative to models.ini's directory."""
    if not raw:
        return None
    if raw.startswith("~"):
        raise ValueError(f"{shown(raw)}: ~ is not expanded here; write the path absolute or "
                         "relative to models.ini's directory")
    if len(raw) > PATH_MAX or CONTROL.search(raw):
        raise ValueError(f"{shown(raw)} is not a file path (a control character, or longer than "
                         f"{PATH_MAX} characters)")
    return raw


def _aliases(raw: str) -> tuple[str, ...]:
    if not raw:
        raise ValueError("empty aliases; list names separated by commas, or remove the line")
    items = [item.strip() for item in raw.split(",")]
    if "" in items:
        raise ValueError(f"empty item in {raw!r}; list names separated by single commas")
    for item in items:
        _check_name(item, "alias")
    if len(set(items)) < len(items):
        raise ValueError(f"{raw!r} lists the same alias twice")
    return tuple(items)


def _sampler(raw: str) -> tuple[tuple[str, float], ...]:
    """``temp=0.5, top_p=0.9`` (commas and/or spaces between pairs) in file order."""
    pairs: list[tuple[str, float]] = []
    for item in re.split(r"[\s,]+", re.sub(r"\s*=\s*", "=", raw).strip(" \t\n,")):
        if not item:
            continue
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{item!r}: expected name=value pairs such as temp=0.5, top_p=0.9")
        if name not in SAMPLER_NAMES:
            raise ValueError(
                f"unknown name {name!r}{closest(name, SAMPLER_NAMES)}; "
                f"known: {', '.join(SAMPLER_NAMES)}"
            )
        if any(name == seen for seen, _ in pairs):
            raise ValueError(f"{name} is given twice")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{item}: {text!r} is not a number")
        if value < 0:
            raise ValueError(f"{item}: must be >= 0")
        if name == "top_k" and not value.is_integer():
            raise ValueError(f"{item}: must be a whole number")
        pairs.append((name, value))
    return tuple(pairs)


_OWNED_FLAGS: dict[str, str] = {
    **dict.fromkeys(("--host", "--port"), "the stack's own address"),
    **dict.fromkeys(("-m", "--model", "-hf", "--hf-repo", "-hff", "--hf-file", "-mu",
                     "--model-url"), "hf_repo / hf_file, or gguf_path"),
    **dict.fromkeys(("-a", "--alias"), "the tier name and aliases"),
    **dict.fromkeys(("-c", "--ctx-size"), "ctx_size"),
    **dict.fromkeys(("-n", "--predict", "--n-predict"), "max_output_tokens"),
    **dict.fromkeys(("-t", "--threads"), "threads in [DEFAULT]"),
    **dict.fromkeys(("-ngl", "--gpu-layers", "--n-gpu-layers"), "n_gpu_layers in [DEFAULT]"),
    **dict.fromkeys(("-fa", "--flash-attn"), "flash_attn in [DEFAULT]"),
    **dict.fromkeys(("-ctk", "--cache-type-k"), "cache_type_k in [DEFAULT]"),
    **dict.fromkeys(("-ctv", "--cache-type-v"), "cache_type_v in [DEFAULT]"),
    **dict.fromkeys(("--jinja", "--no-jinja"), "jinja in [DEFAULT]"),
    **dict.fromkeys(("-lm", "--load-mode", "--warmup", "--no-warmup"), "llmstack"),
    **dict.fromkeys(("--embedding", "--embeddings", "--reranking", "--rerank"),
                    "role = embed / rerank"),
    **dict.fromkeys(("--rope-scaling", "--rope-scale", "--yarn-orig-ctx"), "rope_scaling"),
    **dict.fromkeys(("--temp", "--top-p", "--top-k", "--min-p", "--repeat-penalty"), "sampler"),
    **dict.fromkeys(("--api-key", "--api-key-file"), "the stack's api_keys"),
}
"""llama-server flags the stack sets itself, and the models.ini key (or owner) that sets them."""

_UNSAFE_FLAGS: dict[str, str] = {
    **dict.fromkeys(("--log-file", "--slot-save-path"), "write files outside the stack's places"),
    **dict.fromkeys(("--path", "--media-path", "--models-dir", "--models-preset",
                     "--ui-config-file", "--webui-config-file", "--ssl-key-file",
                     "--ssl-cert-file"), "serve or read files outside the model"),
    **dict.fromkeys(("--tools", "--tools-runtime", "--mcp-servers-config", "--mcp-servers-json"),
                    "run tools (shell commands, file edits) for whoever calls the tier"),
    **dict.fromkeys(("--api-prefix",), "move the routes the stack calls"),
}
"""llama-server flags a models.ini (meant to be shared) may never pass, and what they would let
the server do."""


def _llama_server_args(raw: str) -> tuple[str, ...]:
    """Extra llama-server arguments, split like a shell would (but never run by one)."""
    try:
        args = shlex.split(raw)
    except ValueError as exc:
        raise ValueError(f"{raw!r}: {exc}; quote arguments as in a shell") from None
    for arg in args:
        flag = arg.partition("=")[0]
        if flag in _OWNED_FLAGS:
            raise ValueError(f"{flag} is set by llmstack (use {_OWNED_FLAGS[flag]})")
        if flag in _UNSAFE_FLAGS:
            raise ValueError(f"{flag} is refused: it would let llama-server {_UNSAFE_FLAGS[flag]}")
    if args and not args[0].startswith("-"):
        raise ValueError(f"{args[0]!r}: expected llama-server flags such as --pooling mean")
    return tuple(args)


def _rope(raw: str) -> tuple[float, int]:
    m = _ROPE.fullmatch(raw)
    if not m or float(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise ValueError(
            f"{raw!r}: expected yarn(scale=N, orig_ctx=M), e.g. yarn(scale=4, orig_ctx=32768)"
        )
    return float(m.group(1)), int(m.group(2))


DEFAULT_KEYS: dict[str, Converter] = {
    "host": _text,
    "router_port": _port,
    "n_gpu_layers": _whole("layers", Stack.n_gpu_layers),
    "flash_attn": _text,
    "jinja": _flag,
    "threads": _threads,
    "cache_type_k": _cache_type,
    "cache_type_v": _cache_type,
    "llama_server_bin": _text,
    "memory_budget_mb": _whole("megabytes", 49152),
    "response_timeout": _whole("seconds", Stack.response_timeout),
    "idle_timeout": _whole("seconds", Stack.idle_timeout),
    "max_queue_wait": _whole("seconds", Stack.max_queue_wait),
    "session_cache": _flag,
    "session_cache_max_gb": _gigabytes,
    "session_cache_min_tokens": _whole("tokens", Stack.session_cache_min_tokens),
}
ROUTING_KEYS: dict[str, Converter] = {
    "high_fidelity_ceiling": _whole("tokens", Stack.high_fidelity_ceiling),
    "mid_fidelity_ceiling": _whole("tokens", Stack.mid_fidelity_ceiling),
    "multi_turn": _whole("user turns", Stack.multi_turn),
    "sticky_sessions": _flag,
}
TIER_KEYS: dict[str, Converter] = {
    "backend": _backend,
    "role": _role,
    "tier": _text,
    "description": _text,
    "ctx_size": _whole("tokens", 8192),
    "max_output_tokens": _whole("tokens", 8192),
    "sampler": _sampler,
    "aliases": _aliases,
    "ttl": _whole("seconds", 1800),
    "hf_repo": _hub_value(check_repo_id),
    "hf_file": _hub_value(check_repo_file),
    "gguf_path": _local_path,
    "hf_repo_next": _hub_value(check_repo_id),
    "hf_file_next": _hub_value(check_repo_file),
    "size_gb": _gigabytes,
    "size_gb_next": _gigabytes,
    "quant": _text,
    "quant_next": _text,
    "rope_scaling": _rope,
    "model": _text,
    "model_next": _text,  # a $NAME reference is resolved by the reader
    "send_loading_state": _flag,
    "response_timeout": DEFAULT_KEYS["response_timeout"],
    "idle_timeout": DEFAULT_KEYS["idle_timeout"],
    "api_base": _url,
    "backends": _urls,
    "fallback": _text,
    "llama_server_args": _llama_server_args,
    "session_cache": _flag,
}
KEY_HOMES = {"[DEFAULT]": DEFAULT_KEYS, "[ROUTING]": ROUTING_KEYS, "a tier section": TIER_KEYS}
RETIRED_KEYS = {
    "ultra_triggers": "the ultra triggers are built in: [ultra] or [opus] anywhere, "
    "or ultra: / opus: at the start of a line",
}
SECRET = re.compile(
    r"api_?key|secret|token|password|passwd|aws_access_key_id|aws_role_arn"
    r"|aws_role_session_name",
    re.IGNORECASE,
)
