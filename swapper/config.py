"""Typed model specs for the swapper.

A :class:`SwapperConfig` is built either in code (llmstack builds one from
models.ini) or from a llama-swap style YAML file (:mod:`swapper.yaml_config`).
Macros other than ``${PORT}`` and ``${MODEL_ID}`` are expanded before a spec is
made; ``${PORT}`` is filled in when the process is spawned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

PORT_MACRO = "${PORT}"
DEFAULT_PROXY = "http://127.0.0.1:${PORT}"
DEFAULT_CONCURRENCY_LIMIT = 10
DEFAULT_HEALTH_CHECK_TIMEOUT = 120.0
DEFAULT_UNLOAD_TIMEOUT = 10.0
# Once SIGTERMed, requests in flight get this long to finish (then a stream ends with an error
# event), and then the models stop: a server exits within it plus one unload_timeout.
SHUTDOWN_GRACE = 5
# Below opencode's 5-minute header timeout: past it a waiter gets 503 + Retry-After
# (the load carries on, and the retry joins it) instead of a client-side timeout.
DEFAULT_LOAD_WAIT_TIMEOUT = 240.0
# Upstream timeouts (seconds, 0 = none); the README's "Timeouts" says why these values.
DEFAULT_CONNECT_TIMEOUT = 30.0  # llama-swap's default
DEFAULT_RESPONSE_TIMEOUT = 900.0  # a long prompt on CPU, or a whole non-streamed answer
DEFAULT_IDLE_TIMEOUT = 300.0  # opencode's chunkTimeout: past it the client has given up

# A queued request that has waited this long holds the models it must evict: new requests
# for them queue behind it (see the README's "Fairness"). Longer than a typical agent turn's
# request, so steady traffic is rarely interrupted; short enough that a waiting model is
# never starved for more than this plus one drain.
DEFAULT_MAX_QUEUE_WAIT = 10.0

# The session cache (issue 21, :mod:`swapper.sessions`): slots holding fewer tokens are not
# saved (re-reading them is cheap), and a shutdown gives the saves this long in all (a stop
# for a swap, a TTL or an unload gives them ``SAVE_BUDGET``: the swap waits for them).
DEFAULT_SESSION_MIN_TOKENS = 512
SESSION_SAVE_BUDGET = 120.0
SESSION_SHUTDOWN_BUDGET = 30.0


class ConfigError(ValueError):
    """A configuration problem; ``where`` names the file/line or key path."""

    def __init__(self, message: str, where: str = "") -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class MemoryBudgetError(ConfigError):
    """One model, or a combination the residency rules allow, needs more than the budget."""

    def __init__(self, models: frozenset[str], total_mb: float, budget_mb: float,
                 message: str, where: str = "") -> None:
        self.models, self.total_mb, self.budget_mb = tuple(sorted(models)), total_mb, budget_mb
        super().__init__(message, where)


@dataclass(frozen=True)
class Timeouts:
    """Upstream time limits in seconds; 0 means none.

    ``connect``: to open a connection. ``response``: from the request sent to the
    response's headers. ``idle``: the longest gap between body bytes.
    """

    connect: float = DEFAULT_CONNECT_TIMEOUT
    response: float = DEFAULT_RESPONSE_TIMEOUT
    idle: float = DEFAULT_IDLE_TIMEOUT


@dataclass(frozen=True)
class Filters:
    """Request-body rewrites applied before forwarding upstream."""

    strip_params: tuple[str, ...] = ()
    set_params: Mapping[str, Any] = field(default_factory=dict)
    # llama-swap's setParamsByID: requested id -> params set on top of ``set_params``.
    set_params_by_id: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """One model the swapper can serve.

    ``cmd`` is an argv list. An empty ``cmd`` means the model has no process
    (a proxy-only backend such as a hosted API or an in-process handler): it
    is always ready, costs nothing and is never evicted.
    """

    id: str
    cmd: tuple[str, ...] = ()
    cmd_stop: tuple[str, ...] = ()
    proxy: str = DEFAULT_PROXY
    check_endpoint: str = "/health"
    ttl: float = 0.0
    unload_timeout: float = DEFAULT_UNLOAD_TIMEOUT
    aliases: tuple[str, ...] = ()
    unlisted: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    use_model_name: str = ""
    filters: Filters = field(default_factory=Filters)
    timeouts: Timeouts = field(default_factory=Timeouts)
    concurrency_limit: int = DEFAULT_CONCURRENCY_LIMIT
    memory_mb: float = 0.0
    name: str = ""
    description: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    send_loading_state: bool = False
    """While it loads, streamed chat answers carry progress text in ``reasoning_content``."""
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    # Sent upstream with every request (a peer's API key).
    headers: Mapping[str, str] = field(default_factory=dict)
    session_cache: bool = False
    """A llama-server child whose slots are saved when it stops and restored on a returning
    session's first request (:mod:`swapper.sessions`)."""
    kv_bytes_per_token: int = 0
    """A hint for the size of its first saved slot (0: unknown, learnt from the first save)."""

    @property
    def has_process(self) -> bool:
        return bool(self.cmd)

    @property
    def needs_port_in_cmd(self) -> bool:
        return any(PORT_MACRO in a for a in self.cmd)

    @property
    def needs_port(self) -> bool:
        return PORT_MACRO in self.proxy or any(PORT_MACRO in a for a in self.cmd)


@dataclass(frozen=True)
class Matrix:
    """llama-swap's residency matrix: which models may run together.

    ``sets`` keeps definition order (name -> DSL expression such as
    ``"f & (a | b)"``); ``vars`` maps short names to model ids.
    """

    vars: Mapping[str, str] = field(default_factory=dict)
    evict_costs: Mapping[str, int] = field(default_factory=dict)
    sets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """llama-swap's older residency groups."""

    name: str
    members: tuple[str, ...]
    swap: bool = True
    exclusive: bool = True
    persistent: bool = False


@dataclass(frozen=True)
class Selector:
    """llama-swap's virtual model id resolved per request to one of ``targets``.

    ``strategy``: ``pin`` (always the first), ``warm`` (the first ready, else the
    first starting, else the first) or ``spillover`` (fill each target up to
    ``spillover`` requests in flight, then the next).
    """

    id: str
    strategy: str
    targets: tuple[str, ...]
    spillover: int = 1
    name: str = ""
    description: str = ""
    unlisted: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """A runtime-switchable set of id rewrites; a ``None`` pin makes the id unavailable."""

    name: str
    description: str = ""
    pins: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionCacheConfig:
    """Where saved sessions live and how much of the disk they may take."""

    dir: str = ""
    """Their directory; "" means ``sessions`` under the server's runtime directory."""
    max_bytes: int = 0
    """The cap on their bytes; 0 means a default from the disk
    (:func:`swapper.sessions.cache.default_max_bytes`)."""
    min_tokens: int = DEFAULT_SESSION_MIN_TOKENS
    """Slots holding fewer tokens are not saved."""
    owner: str = ""
    """Names this config in a directory other servers share (llmstack: its models.ini): a
    model's sessions saved under other settings are discarded only when the same owner's
    model of the same id comes back with new ones."""


@dataclass(frozen=True)
class SwapperConfig:
    """Everything the swapper needs to run a set of models."""

    models: Mapping[str, ModelSpec]
    health_check_timeout: float = DEFAULT_HEALTH_CHECK_TIMEOUT
    start_port: int | None = None
    preload: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    private_env: frozenset[str] = frozenset()
    """Environment variables no child inherits (the embedding program's own secrets)."""
    matrix: Matrix | None = None
    groups: tuple[Group, ...] = ()
    memory_budget_mb: float = 0.0
    memory_budget_source: str = ""
    """Where the budget came from (``/api/state`` and the page show it beside the number)."""
    load_wait_timeout: float = DEFAULT_LOAD_WAIT_TIMEOUT
    max_queue_wait: float = DEFAULT_MAX_QUEUE_WAIT
    log_dir: str = ""
    selectors: Mapping[str, Selector] = field(default_factory=dict)
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    priority: Mapping[str, int] = field(default_factory=dict)  # fifo queue priority per model
    # llama-swap's upstream.ignorePaths: /upstream paths that never start a model (regexes).
    upstream_ignore_paths: tuple[str, ...] = ()
    include_aliases_in_list: bool = True
    session_cache: SessionCacheConfig = field(default_factory=SessionCacheConfig)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def _names(self) -> Mapping[str, str]:
        index = {alias: spec.id for spec in self.models.values()
                 for alias in (*spec.aliases, *spec.filters.set_params_by_id)}
        index.update((model_id, model_id) for model_id in self.models)
        return index

    def resolve(self, name: str) -> str | None:
        """Model id for a model id or alias, or None."""
        return self._names.get(name)
