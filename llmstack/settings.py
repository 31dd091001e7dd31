"""The one reader of the environment: every variable llmstack honours, read into one value.

Nothing else in llmstack reads (or writes) ``os.environ``: the command line reads
:class:`Settings` once, when a verb starts, and hands it, or the part of it a function
needs, down. Each variable is parsed here, once; a value read from the environment may be
hostile, so a bad one is a one-line :class:`~llmstack.errors.UserError` naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .errors import UserError

WORK_DIR = "LLMSTACK_WORK_DIR"
MODELS_INI = "LLMSTACK_MODELS_INI"
CACHE_DIR = "LLMSTACK_CACHE_DIR"
LLAMA_SERVER = "LLMSTACK_LLAMA_SERVER"
API_KEYS = "LLMSTACK_API_KEYS"
CORS_ORIGINS = "LLMSTACK_CORS_ORIGINS"
REMOTE_URL = "LLMSTACK_REMOTE_URL"
USE_NEXT = "LLMSTACK_USE_NEXT"
LITELLM_CONFIG = "LLMSTACK_LITELLM_CONFIG"
BACKENDS_API_KEY = "LLMSTACK_BACKENDS_API_KEY"
OPENCODE_CONFIG_DIR = "OPENCODE_CONFIG_DIR"
_CREDENTIAL = re.compile(r"(?:^|_)(?:API_?KEYS?|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(?:_|$)",
                         re.ASCII | re.IGNORECASE)
"""A variable named like a credential (``OPENAI_API_KEY``, ``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``)."""
_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)
_USE_NEXT_VALUES = {"1": True, "true": True, "yes": True, "on": True,
                    "0": False, "false": False, "no": False, "off": False, "": None}


@dataclass(frozen=True)
class OpencodeOverrides:
    """What the user's environment changes in a generated opencode.json (None: not set)."""

    share: str | None = None
    username: str | None = None
    disabled_providers: tuple[str, ...] | None = None
    instructions: tuple[str, ...] | None = None


NO_OVERRIDES = OpencodeOverrides()


@dataclass(frozen=True)
class Settings:
    """The environment as llmstack reads it. ``Settings()`` is an empty environment."""

    variables: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Every variable, for the ones a user's file names (``$NAME`` in models.ini,
    ``os.environ/NAME`` in litellm_config.yaml, a provider's credential variables)."""
    home: Path = field(default_factory=Path.home)

    @classmethod
    def read(cls) -> Settings:
        """This process's environment, now."""
        return cls(MappingProxyType(dict(os.environ)), Path.home())

    def _get(self, name: str) -> str | None:
        """The variable's value; unset and empty are the same."""
        return self.variables.get(name) or None

    def _path(self, name: str) -> Path | None:
        """The variable as a path, ``~`` expanded; None when unset."""
        value = self._get(name)
        return self.expand_home(value) if value else None

    def expand_home(self, text: str) -> Path:
        """``text`` with a leading ``~`` expanded (to :attr:`home`; ``~user`` as the system says)."""
        if text == "~" or text.startswith("~/"):
            return self.home / text[2:]
        return Path(text).expanduser()

    def _expandvars(self, text: str) -> str:
        """``$NAME`` / ``${NAME}`` replaced by these variables, unknown ones left as written
        (``os.path.expandvars``' rule, which huggingface_hub applies to its paths)."""
        def value(match: re.Match[str]) -> str:
            name = match.group(1).strip("{}")
            return self.variables.get(name, match.group(0))
        return _VARIABLE.sub(value, text)

    # --------------------------------------------------------------------- a project

    @property
    def work_dir(self) -> Path | None:
        """``$LLMSTACK_WORK_DIR``: the project, wherever the command runs."""
        path = self._path(WORK_DIR)
        return path.resolve() if path else None

    @property
    def models_ini(self) -> Path | None:
        """``$LLMSTACK_MODELS_INI`` (relative to the current directory)."""
        value = self._get(MODELS_INI)
        return Path(value) if value else None

    @property
    def opencode_config_dir(self) -> Path | None:
        """``$OPENCODE_CONFIG_DIR``: where opencode.json goes instead of ``.llmstack/``."""
        return self._path(OPENCODE_CONFIG_DIR)

    @property
    def opencode(self) -> OpencodeOverrides:
        """``$OPENCODE_SHARE``, ``$OPENCODE_USERNAME``, ``$OPENCODE_DISABLED_PROVIDERS`` (a
        comma list) and ``$OPENCODE_INSTRUCTIONS`` (a colon list); set but empty counts."""
        disabled = self.variables.get("OPENCODE_DISABLED_PROVIDERS")
        instructions = self.variables.get("OPENCODE_INSTRUCTIONS")
        return OpencodeOverrides(
            share=self.variables.get("OPENCODE_SHARE"),
            username=self._get("OPENCODE_USERNAME"),
            disabled_providers=None if disabled is None else tuple(
                p.strip() for p in disabled.split(",") if p.strip()),
            instructions=None if instructions is None else tuple(
                p for p in instructions.split(":") if p))

    @property
    def remote_url(self) -> str:
        """``$LLMSTACK_REMOTE_URL`` ("" when unset), the stack ``install`` makes this a client of."""
        return (self.variables.get(REMOTE_URL) or "").strip()

    @property
    def use_next(self) -> bool | None:
        """``$LLMSTACK_USE_NEXT``: True serves the next channel, False the current, None: unset."""
        raw = self.use_next_text
        if raw not in _USE_NEXT_VALUES:
            raise UserError(f"${USE_NEXT}={raw[:40]!r}: expected 1 (serve the next channel) or 0", 2)
        return _USE_NEXT_VALUES[raw]

    @property
    def use_next_text(self) -> str:
        """``$LLMSTACK_USE_NEXT`` as written (trimmed, lower case), for messages naming it."""
        return (self.variables.get(USE_NEXT) or "").strip().lower()

    @property
    def shell(self) -> str:
        """The user's shell: ``$LLMSTACK_SHELL``, else ``$SHELL``, else bash."""
        return self._get("LLMSTACK_SHELL") or self._get("SHELL") or "bash"

    # --------------------------------------------------------------------- this machine

    @property
    def cache_dir(self) -> Path:
        """llmstack's cache: ``$LLMSTACK_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/llmstack``
        (the llama-server build, the demo models, runtime records, hub metadata)."""
        return self._path(CACHE_DIR) or self._xdg_cache / "llmstack"

    @property
    def _xdg_cache(self) -> Path:
        return self._path("XDG_CACHE_HOME") or self.home / ".cache"

    @property
    def hub_cache(self) -> Path:
        """Where huggingface_hub keeps models: ``$HF_HUB_CACHE``, else (legacy)
        ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
        ``${XDG_CACHE_HOME:-~/.cache}/huggingface/hub``."""
        explicit = self._get("HF_HUB_CACHE") or self._get("HUGGINGFACE_HUB_CACHE")
        if explicit:
            return self.expand_home(self._expandvars(explicit))
        home = self._get("HF_HOME") or str(Path(self._get("XDG_CACHE_HOME") or "~/.cache")
                                            / "huggingface")
        return self.expand_home(self._expandvars(home)) / "hub"

    @property
    def hf_token(self) -> str | None:
        """``$HF_TOKEN`` (never printed)."""
        return self._get("HF_TOKEN")

    @property
    def llama_server(self) -> str | None:
        """``$LLMSTACK_LLAMA_SERVER``: a llama-server binary to use."""
        return self._get(LLAMA_SERVER)

    @property
    def search_path(self) -> str:
        """``$PATH`` (the system default when unset)."""
        return self.variables.get("PATH", os.defpath)

    # --------------------------------------------------------------------- the stack's keys

    @property
    def api_keys(self) -> tuple[str, ...]:
        """``$LLMSTACK_API_KEYS``: the keys the stack requires (comma-separated), in order."""
        return tuple(k.strip() for k in (self.variables.get(API_KEYS) or "").split(",")
                     if k.strip())

    @property
    def auth_headers(self) -> dict[str, str]:
        """What a client of this machine's stack sends: the first API key, as a bearer token."""
        keys = self.api_keys
        return {"Authorization": f"Bearer {keys[0]}"} if keys else {}

    @property
    def cors_origins(self) -> str:
        """``$LLMSTACK_CORS_ORIGINS`` as written (the front door parses it)."""
        return self.variables.get(CORS_ORIGINS) or ""

    @property
    def litellm_config(self) -> Path | None:
        """``$LLMSTACK_LITELLM_CONFIG``: the user's litellm_config.yaml elsewhere."""
        return self._path(LITELLM_CONFIG)

    @property
    def private_env(self) -> frozenset[str]:
        """The variables no llama-server child inherits: the stack's own keys and every
        variable named like a credential (a provider's key, ``HF_TOKEN``, AWS secrets); a
        local model needs none of them."""
        return frozenset({API_KEYS, BACKENDS_API_KEY,
                          *(name for name in self.variables if _CREDENTIAL.search(name))})

    @property
    def backends_api_key(self) -> str | None:
        """``$LLMSTACK_BACKENDS_API_KEY``: the key multi-machine tiers send their backends."""
        return self._get(BACKENDS_API_KEY)


LITELLM_LOCAL_COST_MAP = "LITELLM_LOCAL_MODEL_COST_MAP"


def prepare_for_litellm() -> None:
    """Tell litellm, before it is imported, to read its bundled model cost map rather than
    fetch one from GitHub at import (seconds of stall, and a request off this machine).

    litellm's only switch for this is its process environment, read during ``import
    litellm``; llmstack imports it on a hosted tier's first request, in a worker thread. So
    ``serve`` calls this once at start-up, before any thread or child exists: the one write
    to the environment, here beside the reads, rather than from a request handler. A value
    the user set is kept.
    """
    os.environ.setdefault(LITELLM_LOCAL_COST_MAP, "True")
