"""What a saved slot cache depends on, and which session a request belongs to.

A llama-server slot file names no model: it restores into any server whose KV shapes match,
and a model of the same architecture (another fine-tune, another quant) then answers garbage
(measured, ``notes/session-cache/FINDINGS.md`` Q4). So a saved cache is used only under its
:class:`CacheKey`: the identity (resolved path, size, mtime_ns) of the binary, of the model file
and of any adapter file, and every token of the child's command line (and ``LLAMA_ARG_*``
environment) that is not known to leave the KV cache unchanged. Unknown flags stay in the key:
a flag we did not think of can only make a cache miss, never restore a wrong one. The window
(``-c``) is part of the key.

A session is named by :func:`session_key`: a hash of the client's session id header (when it
sends a valid one) and of the conversation's head (the system text and the messages up to the
first user message). Both, because opencode sends the same ``x-session-id`` with its title
requests, whose head differs: one key for both would pin the title request into the agent's
slot. A file name is only ever a hex digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_VERSION = 1
"""Bumped when what goes into a key changes: every older cache is then discarded."""
HEX_LEN = 32
"""Hex digits of a cache key and of a session key (128 bits)."""

FileId = tuple[str, int, int]
"""(resolved path, size, mtime_ns) of a file."""

# Flags that do not shape the KV cache, each with whether it takes a value. Everything else on
# the command line is part of the key.
_NEUTRAL: dict[str, bool] = {
    **dict.fromkeys(("--host", "--port", "-a", "--alias", "--tags", "-t", "--threads", "-tb",
                     "--threads-batch", "-n", "--predict", "--n-predict", "-b", "--batch-size",
                     "-ub", "--ubatch-size", "-lm", "--load-mode", "-cram", "--cache-ram",
                     "--log-file", "-lv", "--verbosity", "--log-verbosity", "-to", "--timeout",
                     "--threads-http", "--sse-ping-interval", "-sps", "--slot-prompt-similarity",
                     "--cache-reuse", "--prio", "--poll", "-C", "--cpu-mask", "-Cr", "--cpu-range",
                     "--temp", "--temperature", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                     "--repeat-last-n", "--presence-penalty", "--frequency-penalty", "-s", "--seed",
                     "--chat-template", "--chat-template-file", "--chat-template-kwargs",
                     "--reasoning-format", "--reasoning-budget", "--sleep-idle-seconds",
                     "--api-key", "-hft", "--hf-token"), True),
    **dict.fromkeys(("--jinja", "--no-jinja", "--warmup", "--no-warmup", "--metrics", "--slots",
                     "--props", "--log-disable", "-v", "--verbose", "--log-verbose", "--log-prefix",
                     "--no-log-prefix", "--log-timestamps", "--no-log-timestamps", "--ui",
                     "--no-ui", "--webui", "--no-webui", "--perf", "--no-perf"), False),
}
_LOG_COLORS = ("--log-colors", frozenset({"on", "off", "auto"}))  # its value is optional
_MODEL_FLAGS = frozenset({"-m", "--model"})
# Flags naming files whose contents shape the answer: their identity joins the key. The
# value is how the list is separated and whether each item ends in ":SCALE".
_FILE_FLAGS: dict[str, bool] = {"--lora": False, "--lora-scaled": True, "--control-vector": False,
                                "--control-vector-scaled": True, "-md": False,
                                "--model-draft": False, "--spec-draft-model": False}
_OFF_FLAGS: dict[str, str] = {
    **dict.fromkeys(("-mm", "--mmproj", "-mmu", "--mmproj-url"),
                    "a multimodal projector is loaded (its slots cannot be restored)"),
    **dict.fromkeys(("-hf", "-hfr", "--hf-repo", "-mu", "--model-url", "-dr", "--docker-repo"),
                    "the model is not a local file (-m)"),
    "--slot-save-path": "the command sets its own --slot-save-path",
    "--api-key-file": "the child reads its API key from a file",
    "--no-cache-prompt": "prompt caching is off (--no-cache-prompt)",
    "--no-slots": "the slots endpoint is off (--no-slots)",
}
_ENV_PREFIX = "LLAMA_ARG_"
_ENV_NEUTRAL = frozenset({"LLAMA_ARG_HOST", "LLAMA_ARG_PORT", "LLAMA_ARG_MODEL"})
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")  # never in a key record
_ENV_OFF: dict[str, str] = {
    "LLAMA_ARG_MMPROJ": _OFF_FLAGS["--mmproj"], "LLAMA_ARG_MMPROJ_URL": _OFF_FLAGS["--mmproj"],
    "LLAMA_ARG_HF_REPO": _OFF_FLAGS["--hf-repo"], "LLAMA_ARG_MODEL_URL": _OFF_FLAGS["--hf-repo"],
    "LLAMA_ARG_SLOT_SAVE_PATH": _OFF_FLAGS["--slot-save-path"],
}


class Unsupported(ValueError):
    """The child cannot use the session cache; ``str()`` is the reason (one line)."""


@dataclass(frozen=True)
class KvArgs:
    """A child's command line as the key sees it (:func:`parse_argv`)."""

    binary: str
    model: str
    files: tuple[str, ...]
    """Adapter, control vector and draft model files, as given."""
    args: tuple[str, ...]
    """The KV-shaping tokens, in order (neutral flags, their values and secrets removed)."""
    env: tuple[tuple[str, str], ...]
    """The ``LLAMA_ARG_*`` variables that shape the child, sorted."""
    api_key: str | None
    """The key the child requires (``--api-key``, ``LLAMA_API_KEY``), for the slot calls."""
    search_path: str | None = None
    """The child's ``PATH``, where a bare binary name is found."""


def _file_items(flag: str, value: str) -> list[str]:
    items = [item for item in value.split(",") if item]
    return [item.rsplit(":", 1)[0] for item in items] if _FILE_FLAGS[flag] else items


def parse_argv(argv: Sequence[str], env: Mapping[str, str]) -> KvArgs:
    """The parts of ``argv`` (``argv[0]`` the binary) and ``env`` that shape a slot cache.

    Pure. :class:`Unsupported` when the child cannot take part: no local ``-m`` model file, a
    multimodal projector, its own ``--slot-save-path``, prompt caching or the slots endpoint off.
    """
    if not argv:
        raise Unsupported("no command")
    for name in env:
        if name in _ENV_OFF:
            raise Unsupported(_ENV_OFF[name])
    model = env.get("LLAMA_ARG_MODEL", "")
    api_key = env.get("LLAMA_API_KEY") or env.get("LLAMA_ARG_API_KEY") or None
    files: list[str] = []
    args: list[str] = []
    at = 1
    while at < len(argv):
        token = argv[at]
        value = argv[at + 1] if at + 1 < len(argv) else ""
        at += 1
        if token in _OFF_FLAGS:
            raise Unsupported(_OFF_FLAGS[token])
        if token in _NEUTRAL:
            at += _NEUTRAL[token]
            if token == "--api-key":
                api_key = value.split(",")[0] or None
        elif token == _LOG_COLORS[0]:
            at += value in _LOG_COLORS[1]
        elif token in _MODEL_FLAGS:
            model, at = value, at + 1
        else:
            args.append(token)
            if token in _FILE_FLAGS:
                args.append(value)
                files += _file_items(token, value)
                at += 1
    if not model:
        raise Unsupported(_OFF_FLAGS["--hf-repo"])
    shaping = sorted((k, v) for k, v in env.items() if k.startswith(_ENV_PREFIX)
                     and k not in _ENV_NEUTRAL and not any(w in k for w in _SECRET_WORDS))
    return KvArgs(argv[0], model, tuple(files), tuple(args), tuple(shaping), api_key, env.get("PATH"))


def file_id(path: str, search: bool = False, search_path: str | None = None) -> FileId:
    """(resolved path, size, mtime_ns) of regular file ``path`` (a bare name is looked up on
    ``search_path``, else ``PATH``, when ``search``; a relative path is relative to the current
    directory, which a child inherits); :class:`Unsupported` when there is none."""
    found = shutil.which(path, path=search_path) if search and os.sep not in path else path
    if not found:
        raise Unsupported(f"{path}: not found on PATH")
    try:
        real = Path(found).resolve(strict=True)
        st = real.stat()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on Python 3.10
        raise Unsupported(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Unsupported(f"{path}: not a regular file")
    return str(real), st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class CacheKey:
    """Everything a slot file depends on: ``hex`` names its directory, ``record`` (JSON, no
    secrets) is kept beside it so that a later key can say what changed."""

    hex: str
    record: Mapping[str, Any]
    kv: KvArgs


def cache_key(kv: KvArgs) -> CacheKey:
    """The key of a child parsed by :func:`parse_argv` (stats its files: I/O, no reading)."""
    record = {"v": KEY_VERSION, "binary": list(file_id(kv.binary, True, kv.search_path)),
              "model": list(file_id(kv.model)), "files": [list(file_id(f)) for f in kv.files],
              "args": list(kv.args), "env": [list(pair) for pair in kv.env]}
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return CacheKey(hashlib.sha256(text.encode()).hexdigest()[:HEX_LEN], record, kv)


def _groups(args: object) -> list[str]:
    """``-c 8192`` style groups of a token list, for messages (anything else: none)."""
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return []
    groups: list[str] = []
    for token in args:
        starts = token.startswith("-") and not token.lstrip("-").replace(".", "", 1).isdigit()
        if starts or not groups:
            groups.append(token)
        else:
            groups[-1] += f" {token}"
    return groups


def what_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Why a cache saved under key record ``old`` is no use under ``new`` (one line; pure)."""
    if old.get("v") != new.get("v"):
        return "the cache format changed"
    changes = [f"{label} changed" for name, label in (("binary", "the llama-server binary"),
                                                      ("model", "the model file"),
                                                      ("files", "the adapter files"))
               if old.get(name) != new.get(name)]
    if old.get("args") != new.get("args") or old.get("env") != new.get("env"):
        was, now = _groups(old.get("args")), _groups(new.get("args"))
        gone = " ".join(g for g in was if g not in now) or "-"
        added = " ".join(g for g in now if g not in was) or "-"
        changes.append(f"the settings changed (was {gone[:120]}, now {added[:120]})")
    return "; ".join(changes) or "the key changed"


# -- sessions -----------------------------------------------------------------------------

SESSION_HEADERS = ("x-session-id", "x-claude-code-session-id")
"""Headers naming a client's session (opencode's, Claude Code's), first match wins."""
MAX_SESSION_ID = 200
PREFIX_MESSAGES = 16
"""Leading messages looked at for the conversation's head."""
PREFIX_CHARS = 256 * 1024
"""Characters of the head hashed at most (the rest of a huge first message is not read)."""


def session_id(value: str | bytes | None) -> str | None:
    """A client's session id if it is 1..200 printable ASCII characters, else None."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not value or len(value) > MAX_SESSION_ID or not all("!" <= c <= "~" for c in value):
        return None
    return value


def session_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The first valid session id among ``headers`` (raw name/value pairs)."""
    found = {name.lower(): value for name, value in headers}
    for name in SESSION_HEADERS:
        if (value := session_id(found.get(name.encode()))) is not None:
            return value
    return None


class _Budget:
    """Text taken from a body, at most :data:`PREFIX_CHARS` characters in all."""

    def __init__(self) -> None:
        self.left = PREFIX_CHARS

    def take(self, text: str) -> str:
        text = text[:max(self.left, 0)]
        self.left -= len(text)
        return text

    def content(self, content: object) -> str:
        """A message's text: a string, or its parts' ``text`` (other parts by type)."""
        if isinstance(content, str):
            return self.take(content)
        if not isinstance(content, list):
            return ""
        pieces = []
        for part in content[:PREFIX_MESSAGES * 4]:
            if isinstance(part, dict):
                text = part.get("text")
                pieces.append(self.take(text) if isinstance(text, str) else f"[{part.get('type')}]")
        return "\n".join(pieces)


def _head_messages(messages: object, budget: _Budget) -> list[list[str]]:
    """(role, text) of the leading messages up to the first user message."""
    head: list[list[str]] = []
    if not isinstance(messages, list):
        return head
    for item in messages[:PREFIX_MESSAGES]:
        if not isinstance(item, dict):
            continue
        role = item.get("role", item.get("type"))
        role = role if isinstance(role, str) else ""
        head.append([role[:32], budget.content(item.get("content"))])
        if role == "user":
            break
    return head


def conversation_head(body: Mapping[str, Any]) -> list[list[str]] | None:
    """The head of a chat (``messages``), Anthropic messages (``system`` + ``messages``) or
    responses (``instructions`` + ``input``) body: its system text and the messages up to the
    first user message, bounded; None when it has no user message. Pure."""
    budget = _Budget()
    head = [["system", budget.content(body.get(name))]
            for name in ("system", "instructions") if body.get(name) is not None]
    turns = body.get("messages", body.get("input"))
    if isinstance(turns, str) and "messages" not in body:  # the responses API's plain input
        head.append(["user", budget.take(turns)])
    else:
        head += _head_messages(turns, budget)
    return head if any(role == "user" for role, _ in head) else None


def session_key(client_session: str | None, body: Mapping[str, Any] | None) -> str | None:
    """The hex key of the session a request belongs to, from the client's session id and the
    conversation's head; None when it has neither (such a request is not pinned to a slot)."""
    head = conversation_head(body) if body is not None else None
    if client_session is None and head is None:
        return None
    text = json.dumps(["llmstack-session", KEY_VERSION, client_session, head], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HEX_LEN]
