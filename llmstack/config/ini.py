"""models.ini: read and strictly validate it into frozen dataclasses.

The syntax is the stdlib ``configparser``'s (``;``/``#`` full-line comments,
``;`` inline comments after whitespace, ``=`` or ``:`` between key and value,
case-insensitive keys, indented continuation lines, no interpolation). A small
scanner reproduces those rules itself because configparser keeps no line
numbers and stops at the first duplicate; every problem in the file is
collected and raised together as one :class:`ModelsIniError`.

``[DEFAULT]`` holds only stack-wide keys, so the values a tier inherits from it
are never read per tier; tier keys belong in tier sections. The upstream
timeouts (``response_timeout``, ``idle_timeout``) are the exception: set in
``[DEFAULT]`` for every tier, and per tier to override it.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

from swapper.config import DEFAULT_IDLE_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT
from swapper.small_files import CONFIG_LIMIT, read_small

from .hub_names import check_repo_file, check_repo_id

Backend = Literal["gguf", "litellm"]
BACKENDS: tuple[str, ...] = ("gguf", "litellm")
ROLES: tuple[str, ...] = ("fast", "agent", "ultra", "plan", "plan-uncensored", "embed", "rerank")
SERVING_ROLES: dict[str, str] = {"embed": "--embeddings", "rerank": "--reranking"}
"""Roles that serve one non-chat job, and the llama-server flag that turns it on."""
SAMPLER_NAMES: tuple[str, ...] = ("temp", "top_p", "top_k", "min_p", "rep_pen")
CACHE_TYPES: tuple[str, ...] = (
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1",
)
"""llama-server's allowed --cache-type-k / --cache-type-v values."""

DEFAULT_ROLE_TTL: dict[str, int] = {"fast": 0, "agent": 1800, "plan": 1200, "plan-uncensored": 1200}
DEFAULT_TTL = 1200
"""Idle seconds before unloading a tier whose role is not in DEFAULT_ROLE_TTL."""

DEFAULT_ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "fast": ("fast", "small", "autocomplete"),
    "agent": ("agent", "smart", "code", "coder"),
    "plan": ("plan", "planner", "chat"),
    "plan-uncensored": ("uncensored", "nofilter", "plan-nofilter", "heretic"),
    "embed": ("embed", "embedding", "embeddings"),
    "rerank": ("rerank", "reranker"),
}

RESERVED_NAMES = frozenset({"auto"})
"""Model ids the router answers itself; no tier may use them."""
STACK_LOG_NAME = "llmstack"
"""The stack's own log is ``<log dir>/llmstack.log``, beside each tier's ``<tier>.log``."""
TIER_NAME_MAX = 64
_TIER_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{TIER_NAME_MAX - 1}}}")
"""A tier name is also a file name (``<tier>.log``): letters, digits, ``-``, ``_``, ``.``."""

DEFAULT_SECTION = "DEFAULT"
ROUTING_SECTION = "ROUTING"


# --------------------------------------------------------------------------- errors


class IniError(NamedTuple):
    """One problem, located as ``file:line: [section] key: message``."""

    file: str
    line: int
    section: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:" if self.line else f"{self.file}:"
        if self.section:
            where += f" [{self.section}]"
        return f"{where} {self.key}: {self.message}" if self.key else f"{where} {self.message}"


class ModelsIniError(ValueError):
    """Every problem found in one models.ini; ``str()`` prints one per line."""

    def __init__(self, errors: Iterable[IniError]) -> None:
        self.errors: list[IniError] = sorted(errors, key=lambda e: e.line)
        super().__init__("\n".join(map(str, self.errors)))


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Tier:
    """One model clients can ask for by name (a models.ini tier section)."""

    name: str
    backend: Backend
    role: str = ""
    """One of ROLES, or "" when the section sets none (reachable by name only)."""
    line: int = 0
    """Line of the section header."""
    tier: str = ""
    description: str = ""
    """Display name; the parser fills in the section name when unset."""
    ctx_size: int = 0
    """Context window in tokens; 0 means the model's own default."""
    max_output_tokens: int = 0
    """Output limit advertised to clients; 0 means unset."""
    sampler: tuple[tuple[str, float], ...] = ()
    """(name, value) pairs in file order, names from SAMPLER_NAMES."""
    aliases: tuple[str, ...] = ()
    """Explicit aliases; see :attr:`effective_aliases`."""
    ttl: int | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    hf_repo_next: str | None = None
    """Repo of the queued upgrade; the parser fills in hf_repo when unset."""
    hf_file_next: str | None = None
    size_gb: float | None = None
    size_gb_next: float | None = None
    quant: str | None = None
    quant_next: str | None = None
    rope_scaling: tuple[float, int] | None = None
    """(scale, orig_ctx) from ``yarn(scale=N, orig_ctx=M)``."""
    model: str | None = None
    model_next: str | None = None
    """litellm id of the queued upgrade; ``$NAME``/``${NAME}`` read from the environment."""
    send_loading_state: bool = False
    """While it loads, streamed chat answers show progress in ``reasoning_content``."""
    response_timeout: int | None = None
    """Seconds to the upstream's response headers (0 = none); None: the stack's."""
    idle_timeout: int | None = None
    """Longest gap in seconds between upstream body bytes (0 = none); None: the stack's."""
    api_base: str | None = None
    """Hosted tier: the provider endpoint (an address, never a secret)."""
    backends: tuple[str, ...] = ()
    """Base URLs of other machines serving this tier; served through litellm's Router."""
    fallback: str | None = None
    """Tier that answers when this litellm-served tier fails before answering."""
    llama_server_args: tuple[str, ...] = ()
    """Extra llama-server arguments (shlex-split, never through a shell)."""

    @property
    def effective_aliases(self) -> tuple[str, ...]:
        """Explicit aliases, else the role's defaults (never the tier's own name)."""
        if self.aliases:
            return self.aliases
        defaults = DEFAULT_ROLE_ALIASES.get(self.role, (self.role,) if self.role else ())
        return tuple(a for a in defaults if a != self.name)

    @property
    def effective_ttl(self) -> int:
        """Explicit ttl, else the role's default idle time in seconds."""
        return self.ttl if self.ttl is not None else DEFAULT_ROLE_TTL.get(self.role, DEFAULT_TTL)

    def queued(self) -> Tier | None:
        """This tier as the next channel serves it (``hf_file_next`` / ``model_next`` in
        place of the current ones); None when it queues no upgrade."""
        if self.backend == "gguf" and self.hf_file_next:
            size_gb = self.size_gb_next if self.size_gb_next is not None else self.size_gb
            return replace(self, hf_repo=self.hf_repo_next or self.hf_repo,
                           hf_file=self.hf_file_next, size_gb=size_gb,
                           quant=self.quant_next or self.quant)
        if self.backend == "litellm" and self.model_next:
            return replace(self, model=self.model_next)
        return None


@dataclass(frozen=True)
class Stack:
    """The whole models.ini. ``Stack()`` is an empty stack with the defaults."""

    host: str = "127.0.0.1"
    router_port: int = 10101
    n_gpu_layers: int = 999
    flash_attn: str = "on"
    jinja: bool = True
    threads: int = -1
    cache_type_k: str = "q8_0"
    cache_type_v: str = "q8_0"
    llama_server_bin: str | None = None
    memory_budget_mb: int | None = None
    """None when unset: the caller picks a budget."""
    max_queue_wait: int | None = None
    """Seconds a queued request waits before it holds the model it must evict; None: default."""
    high_fidelity_ceiling: int = 12000
    mid_fidelity_ceiling: int = 32000
    multi_turn: int = 10
    sticky_sessions: bool = True
    response_timeout: int = int(DEFAULT_RESPONSE_TIMEOUT)
    idle_timeout: int = int(DEFAULT_IDLE_TIMEOUT)
    tiers: tuple[Tier, ...] = ()
    path: str = ""

    @cached_property
    def _index(self) -> dict[str, Tier]:
        index = {alias: t for t in reversed(self.tiers) for alias in t.effective_aliases}
        index.update((t.name, t) for t in self.tiers)
        return index

    def tier(self, name_or_alias: str) -> Tier | None:
        """The tier with this name, else the one with this alias, else None."""
        return self._index.get(name_or_alias)

    def first_with_role(self, role: str) -> Tier | None:
        """The first tier (in file order) with this role, or None."""
        return next((t for t in self.tiers if t.role == role), None)


# --------------------------------------------------------------------------- value converters
# Each takes the raw (comment-stripped) value and returns the typed value, or
# raises ValueError with a message that is shown after "key: ".

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


def _whole(unit: str, example: int) -> Converter:
    def convert(raw: str) -> int:
        if not _WHOLE.fullmatch(raw):
            raise ValueError(f"{raw!r}: expected a whole number of {unit} such as {example}")
        return int(raw)

    return convert


def _port(raw: str) -> int:
    if not _WHOLE.fullmatch(raw) or not 0 < int(raw) < 65536:
        raise ValueError(f"{raw!r}: expected a TCP port (1-65535) such as 10101")
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
        raise ValueError(f"unknown KV cache type {raw!r}{_closest(raw, CACHE_TYPES)}; "
                         f"llama-server accepts {', '.join(CACHE_TYPES)}")
    return raw


def _text(raw: str) -> str | None:
    return raw or None


def _model_next(raw: str) -> str | None:
    """``$NAME`` / ``${NAME}`` is replaced by that environment variable (None if unset)."""
    ref = _ENV_REF.fullmatch(raw)
    return os.environ.get(ref.group(1) or ref.group(2)) if ref else _text(raw)


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


def _closest(word: str, choices: Iterable[str]) -> str:
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
        raise ValueError(f"unknown role {raw!r}{_closest(raw, ROLES)}; known roles: {known}")
    return raw


def _check_name(name: str, what: str) -> None:
    if not name:
        raise ValueError(f"empty {what}")
    if any(c.isspace() for c in name):
        raise ValueError(f"{what} {name!r} contains whitespace")
    if name in RESERVED_NAMES:
        raise ValueError(f"{what} {name!r} is reserved for the router")


def _check_tier_name(name: str) -> None:
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
                f"unknown name {name!r}{_closest(name, SAMPLER_NAMES)}; "
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
                     "--model-url"), "hf_repo / hf_file"),
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


_DEFAULT_KEYS: dict[str, Converter] = {
    "host": _text,
    "router_port": _port,
    "n_gpu_layers": _whole("layers", 999),
    "flash_attn": _text,
    "jinja": _flag,
    "threads": _threads,
    "cache_type_k": _cache_type,
    "cache_type_v": _cache_type,
    "llama_server_bin": _text,
    "memory_budget_mb": _whole("megabytes", 57344),
    "response_timeout": _whole("seconds", 900),
    "idle_timeout": _whole("seconds", 300),
    "max_queue_wait": _whole("seconds", 10),
}
_ROUTING_KEYS: dict[str, Converter] = {
    "high_fidelity_ceiling": _whole("tokens", 12000),
    "mid_fidelity_ceiling": _whole("tokens", 32000),
    "multi_turn": _whole("user turns", 10),
    "sticky_sessions": _flag,
}
_TIER_KEYS: dict[str, Converter] = {
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
    "hf_repo_next": _hub_value(check_repo_id),
    "hf_file_next": _hub_value(check_repo_file),
    "size_gb": _gigabytes,
    "size_gb_next": _gigabytes,
    "quant": _text,
    "quant_next": _text,
    "rope_scaling": _rope,
    "model": _text,
    "model_next": _model_next,
    "send_loading_state": _flag,
    "response_timeout": _DEFAULT_KEYS["response_timeout"],
    "idle_timeout": _DEFAULT_KEYS["idle_timeout"],
    "api_base": _url,
    "backends": _urls,
    "fallback": _text,
    "llama_server_args": _llama_server_args,
}
_KEYS_BY_SECTION = {DEFAULT_SECTION: _DEFAULT_KEYS, ROUTING_SECTION: _ROUTING_KEYS}
_KEY_HOMES = {"[DEFAULT]": _DEFAULT_KEYS, "[ROUTING]": _ROUTING_KEYS, "a tier section": _TIER_KEYS}
_RETIRED_KEYS = {
    "ultra_triggers": "the ultra triggers are built in: [ultra] or [opus] anywhere, "
    "or ultra: / opus: at the start of a line",
}
_SECRET = re.compile(
    r"api_?key|secret|token|password|passwd|aws_access_key_id|aws_role_arn"
    r"|aws_role_session_name",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- scanner


class _Entry(NamedTuple):
    line: int
    parts: list[str]
    """The value's lines (continuation lines and blank lines inside it)."""

    @property
    def value(self) -> str:
        return "\n".join(self.parts).rstrip()


@dataclass
class _Section:
    name: str
    line: int
    entries: dict[str, _Entry] = field(default_factory=dict)


_HEADER = re.compile(r"\[(?P<name>.+)\]")
_OPTION = re.compile(r"(?P<key>.*?)\s*[=:]\s*(?P<value>.*)")
_INLINE_COMMENT = re.compile(r"(?:^|\s);")


class _Checker:
    """Collects located errors for one file."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[IniError] = []

    def at(self, line: int, section: str, key: str, message: str) -> None:
        self.errors.append(IniError(self.source, line, section, key, message))

    def error(self, section: _Section, key: str, message: str) -> None:
        """Report at the key's line, or the section header's when the key is not written."""
        line = section.entries[key].line if key in section.entries else section.line
        self.at(line, section.name, key, message)

    def values(self, section: _Section, known: Mapping[str, Converter]) -> dict[str, Any]:
        """Convert every key written in the section; report unknown, secret and bad ones."""
        values: dict[str, Any] = {}
        for key, entry in section.entries.items():
            if key in known:
                try:
                    value = known[key](entry.value)
                except ValueError as exc:
                    self.error(section, key, str(exc))
                else:
                    if value is not None:  # an empty text value means "unset"
                        values[key] = value
            elif _SECRET.search(key) and not any(  # a typo of a key like max_output_tokens
                    _SECRET.search(k) for k in difflib.get_close_matches(key, list(known), n=1)):
                self.error(
                    section,
                    key,
                    "looks like a secret, and models.ini is meant to be committed; "
                    "export it instead (e.g. ANTHROPIC_API_KEY, OPENAI_API_KEY) or use a named "
                    "AWS profile (AWS_PROFILE), which litellm reads from the environment",
                )
            else:
                self.error(section, key, _unknown_key_message(key, known))
        return values


def _scan(text: str, check: _Checker) -> list[_Section]:
    """Split text into sections and entries with configparser's line rules."""
    sections: dict[str, _Section] = {}
    current: _Section | None = None
    entry: _Entry | None = None  # the entry an indented line continues
    entry_indent = 0
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if raw.strip().startswith((";", "#")):
            continue
        comment = _INLINE_COMMENT.search(raw)
        value = (raw[: comment.start()] if comment else raw).strip()
        if not value:
            if entry is not None:
                entry.parts.append("")
            continue
        indent = len(raw) - len(raw.lstrip())
        if entry is not None and indent > entry_indent:
            entry.parts.append(value)
            continue
        entry, entry_indent = None, indent
        header = _HEADER.match(value)
        option = _OPTION.fullmatch(value)
        if header:
            name = header.group("name")
            if name in sections:
                first = sections[name].line
                check.at(lineno, name, "", f"duplicate section (first at line {first})")
            current = sections.setdefault(name, _Section(name, lineno))
        elif current is None:
            check.at(lineno, "", "", f"{value!r} comes before any [section] header")
        elif not option or not option.group("key"):
            check.at(lineno, current.name, "", f"{value!r}: expected key = value")
        else:
            key = option.group("key").lower()
            if key in current.entries:
                first = current.entries[key].line
                check.at(lineno, current.name, key, f"duplicate key (first at line {first})")
            entry = _Entry(lineno, [option.group("value")])
            current.entries.setdefault(key, entry)
    return list(sections.values())


# --------------------------------------------------------------------------- parsing


def _unknown_key_message(key: str, known: Mapping[str, Converter]) -> str:
    if key in _RETIRED_KEYS:
        return f"unknown key: {_RETIRED_KEYS[key]}"
    home = next((where for where, keys in _KEY_HOMES.items() if key in keys), None)
    if home:
        return f"this key belongs in {home}"
    return f"unknown key{_closest(key, known)}"


def _tier(section: _Section, values: dict[str, Any], check: _Checker) -> Tier | None:
    """Build a tier, detecting its backend as the original did."""
    backend = values.pop("backend", None)
    if ("backend" in section.entries and backend is None) or (
            "backends" in section.entries and "backends" not in values):
        return None  # bad backend(s) value, already reported
    gguf_ready = bool(values.get("hf_repo") and values.get("hf_file"))
    if values.get("backends") and backend in (None, "litellm"):
        backend = "litellm"  # another machine's tier of the same name, unless model says otherwise
        values.setdefault("model", f"openai/{section.name}")
    if backend is None:
        backend = "litellm" if values.get("model") else "gguf" if gguf_ready else None
    if backend is None:
        check.error(section, "", "not a tier: set hf_repo+hf_file (local), model (hosted) "
                                 "or backends (other machines)")
        return None
    if backend == "litellm" and not values.get("model"):
        check.error(section, "backend", "backend = litellm needs model = <provider>/<model-id>")
        return None
    if backend == "gguf" and values.get("backends"):
        check.error(section, "backends", "a tier with backends is served by those machines; "
                                         "remove hf_repo/hf_file or backend = gguf")
    if backend == "litellm" and values.get("llama_server_args"):
        check.error(section, "llama_server_args", "only local (gguf) tiers run llama-server")
        return None
    if backend == "gguf" and not gguf_ready:
        check.error(section, "backend", "backend = gguf needs hf_repo and hf_file")
        return None
    try:
        _check_tier_name(section.name)
    except ValueError as exc:
        check.error(section, "", str(exc))
    values["description"] = values.get("description") or section.name
    if backend == "gguf":
        values["hf_repo_next"] = values.get("hf_repo_next") or values["hf_repo"]
    return Tier(name=section.name, backend=backend, line=section.line, **values)


def _check_names(tiers: Iterable[Tier], sections: Mapping[str, _Section], check: _Checker) -> None:
    """No name or alias may point at two tiers."""
    owners: dict[str, str] = {t.name: t.name for t in tiers}
    for t in tiers:
        clashes = [
            f"{alias!r} (used by [{owners[alias]}])"
            for alias in t.effective_aliases
            if owners.setdefault(alias, t.name) != t.name
        ]
        if clashes and t.aliases:
            check.error(sections[t.name], "aliases", f"already taken: {', '.join(clashes)}")
        elif clashes:
            check.error(
                sections[t.name],
                "role",
                f"default aliases of role {t.role} already taken: "
                f"{', '.join(clashes)}; set aliases = ... for this tier",
            )


def _check_ladder(stack: Stack, sections: Mapping[str, _Section], check: _Checker) -> None:
    """high < mid, and each ceiling fits the context of the tier it routes to."""
    routing = sections.get(ROUTING_SECTION, _Section(ROUTING_SECTION, 0))
    high, mid = stack.high_fidelity_ceiling, stack.mid_fidelity_ceiling
    if high >= mid:  # only possible when at least one of them is written
        key = (
            "high_fidelity_ceiling"
            if "high_fidelity_ceiling" in routing.entries
            else "mid_fidelity_ceiling"
        )
        check.error(
            routing, key, f"high_fidelity_ceiling {high} must be below mid_fidelity_ceiling {mid}"
        )
    agent = stack.first_with_role("agent")
    for key, tier in (
        ("high_fidelity_ceiling", stack.first_with_role("ultra") or agent),
        ("mid_fidelity_ceiling", agent),
    ):
        ceiling = getattr(stack, key)
        if tier is None or not 0 < tier.ctx_size < ceiling:
            continue
        if key in routing.entries:
            check.error(
                routing,
                key,
                f"{ceiling} is larger than ctx_size {tier.ctx_size} of "
                f"[{tier.name}], the tier it routes to",
            )
        else:
            check.error(
                sections[tier.name],
                "ctx_size",
                f"{tier.ctx_size} is smaller than {key} "
                f"{ceiling} (the default), so auto would send requests here that do not fit",
            )


def parse_stack(text: str, source: str = "models.ini") -> Stack:
    """Parse and validate models.ini text; raise ModelsIniError listing every problem."""
    check = _Checker(source)
    sections = {s.name: s for s in _scan(text, check)}
    settings: dict[str, Any] = {}
    tiers: list[Tier] = []
    for section in sections.values():
        if section.name in _KEYS_BY_SECTION:
            settings.update(check.values(section, _KEYS_BY_SECTION[section.name]))
        else:
            tier = _tier(section, check.values(section, _TIER_KEYS), check)
            tiers += [tier] if tier else []
    stack = Stack(**settings, tiers=tuple(tiers), path=source)
    _check_names(stack.tiers, sections, check)
    for t in stack.tiers:
        if t.fallback is not None and (stack.tier(t.fallback) in (None, t)):
            check.error(sections[t.name], "fallback", f"{t.fallback!r} is not another tier")
    _check_ladder(stack, sections, check)
    if check.errors:
        raise ModelsIniError(check.errors)
    return stack


def load_stack(path: str | os.PathLike[str]) -> Stack:
    """Read and parse a models.ini file; FileNotFoundError if it is missing."""
    return parse_stack(read_models_ini(path), str(path))


def read_models_ini(path: str | os.PathLike[str]) -> str:
    """The text of a models.ini file; FileNotFoundError if it is missing.

    A file that is not a regular UTF-8 text file of at most
    :data:`~swapper.small_files.CONFIG_LIMIT` bytes (a FIFO, a device, a directory,
    binary data, another encoding, no permission, too large) is a one-line
    :class:`ModelsIniError`.
    """
    source = str(path)

    def unreadable(line: int, message: str) -> ModelsIniError:
        return ModelsIniError([IniError(source, line, "", "", message)])

    try:
        raw = read_small(Path(path), CONFIG_LIMIT)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise unreadable(0, str(exc).removeprefix(f"{source}: ")) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise unreadable(raw.count(b"\n", 0, exc.start) + 1, f"not UTF-8 text (byte "
                         f"0x{raw[exc.start]:02x}); models.ini must be UTF-8") from None
    if "\0" in text:
        raise unreadable(text.count("\n", 0, text.index("\0")) + 1,
                         "binary data (a NUL byte); models.ini must be a text file")
    return text


def bundled_template_text() -> str:
    """The models.ini template shipped inside the package."""
    return resources.files("llmstack").joinpath("data/models.ini").read_text(encoding="utf-8")
