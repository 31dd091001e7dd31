"""What a stack is: the tiers and settings of a models.ini, with every key's default.

A :class:`Stack` holds the stack-wide keys (``[DEFAULT]`` and ``[ROUTING]``) and its
:class:`Tier` sections; a field's default is the key's default, and nothing else in
llmstack restates one. :mod:`llmstack.config.ini` reads a file into these values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal

from swapper.config import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_QUEUE_WAIT,
    DEFAULT_RESPONSE_TIMEOUT,
    DEFAULT_SESSION_MIN_TOKENS,
)

from .address import DEFAULT_HOST, DEFAULT_PORT, url_for

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
    gguf_path: str | None = None
    """A GGUF file on this machine instead of hf_repo/hf_file: absolute, as the reader resolved
    it (written relative to models.ini's directory, or absolute)."""
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
    session_cache: bool | None = None
    """Save its sessions' KV caches when it stops; None: [DEFAULT]'s (see
    :meth:`Stack.session_cache_for`)."""

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

    host: str = DEFAULT_HOST
    router_port: int = DEFAULT_PORT
    n_gpu_layers: int = 999
    flash_attn: str = "on"
    jinja: bool = True
    threads: int = -1
    cache_type_k: str = "q8_0"
    cache_type_v: str = "q8_0"
    llama_server_bin: str | None = None
    memory_budget_mb: int = 0
    """MB the resident local models may use together; 0 (unset): detected from the machine
    (:mod:`llmstack.models.machine`)."""
    memory_budget_line: int = field(default=0, compare=False)
    """Line of ``memory_budget_mb`` in models.ini (0: not written), for errors naming it."""
    max_queue_wait: int = int(DEFAULT_MAX_QUEUE_WAIT)
    """Seconds a queued request waits before it holds the model it must evict."""
    high_fidelity_ceiling: int = 12000
    mid_fidelity_ceiling: int = 32000
    multi_turn: int = 10
    sticky_sessions: bool = True
    response_timeout: int = int(DEFAULT_RESPONSE_TIMEOUT)
    idle_timeout: int = int(DEFAULT_IDLE_TIMEOUT)
    session_cache: bool = True
    """Local chat tiers save their sessions' KV caches when they stop (issue 21)."""
    session_cache_max_gb: float = 0.0
    """The cap on saved sessions in GB (10^9 bytes); 0: a tenth of the disk that holds them,
    at most 50 GB and half its free space."""
    session_cache_min_tokens: int = DEFAULT_SESSION_MIN_TOKENS
    """Sessions holding fewer tokens are not saved (re-reading them is cheap)."""
    tiers: tuple[Tier, ...] = ()
    path: str = ""

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the stack."""
        return url_for(self.host, self.router_port)

    @cached_property
    def _index(self) -> dict[str, Tier]:
        index = {alias: t for t in reversed(self.tiers) for alias in t.effective_aliases}
        index.update((t.name, t) for t in self.tiers)
        return index

    def tier(self, name_or_alias: str) -> Tier | None:
        """The tier with this name, else the one with this alias, else None."""
        return self._index.get(name_or_alias)

    def session_cache_for(self, tier: Tier) -> bool:
        """Whether a tier saves its sessions: its own ``session_cache``, else [DEFAULT]'s for
        a local chat tier (never for a hosted one; embed and rerank tiers only when they say
        so: they hold no conversation)."""
        if tier.backend != "gguf":
            return False
        if tier.session_cache is not None:
            return tier.session_cache
        return self.session_cache and tier.role not in SERVING_ROLES

    def first_with_role(self, role: str) -> Tier | None:
        """The first tier (in file order) with this role, or None."""
        return next((t for t in self.tiers if t.role == role), None)
