"""One load, in llama-swap's order: environment macros, global keys and macros, models
and peers, residency and routing, the hooks and the rest of the globals; then the
residency plan is compiled so a bad matrix fails at load."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..config import (
    DEFAULT_HEALTH_CHECK_TIMEOUT,
    DEFAULT_LOAD_WAIT_TIMEOUT,
    DEFAULT_MAX_QUEUE_WAIT,
    DEFAULT_SESSION_MIN_TOKENS,
    DEFAULT_UNLOAD_TIMEOUT,
    ConfigError,
    SessionCacheConfig,
    SwapperConfig,
)
from ..peers import peer_models
from ..small_files import CONFIG_LIMIT, read_small
from . import routing
from .macros import definitions, expanded, resolve_macros, with_environment
from .models import model, names, peers
from .source import Source, YamlPath, key_lines

MIN_HEALTH_CHECK_TIMEOUT = 15.0
_GLOBAL_KEYS = frozenset({
    "models", "macros", "healthCheckTimeout", "startPort", "globalTTL", "unloadTimeout",
    "hooks", "apiKeys", "matrix", "groups", "routing", "memoryBudgetMB", "loadWaitTimeout",
    "maxQueueWait", "sendLoadingState", "selectors", "profiles", "peers", "includeAliasesInList",
    "upstream", "sessionCache",
})
_SESSION_CACHE_KEYS = frozenset({"dir", "maxGB", "minTokens"})
GB = 10**9
# llama-swap's default upstream.ignorePaths: static files a model's web UI asks for.
DEFAULT_UPSTREAM_IGNORE_PATHS = (r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$",)


def load_yaml_config(path: str | os.PathLike[str]) -> SwapperConfig:
    """Read and validate a llama-swap ``config.yaml`` (a regular file of at most
    :data:`~swapper.small_files.CONFIG_LIMIT` bytes; else an OSError, one line)."""
    return parse_yaml_config(read_small(Path(path), CONFIG_LIMIT).decode("utf-8"), str(path))


def parse_yaml_config(text: str, source_name: str = "<config>") -> SwapperConfig:
    """Validate llama-swap YAML ``text``; errors name ``source_name``, line and key path."""
    try:
        data = yaml.safe_load(text)
        lines = key_lines(yaml.compose(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source_name) from exc
    return _load(Source(source_name, lines), data)


def _optional(top: Mapping[str, Any], key: str, parse: Callable[[Any, YamlPath], Any],
              default: Any, under: YamlPath = ()) -> Any:
    """``top[key]`` parsed (its path: ``under`` then ``key``), else ``default``."""
    return default if top.get(key) is None else parse(top[key], (*under, key))


def _load(src: Source, data: Any) -> SwapperConfig:
    if not isinstance(data, dict):
        raise src.error((), "expected a mapping with a 'models' key")
    data = with_environment(src, data)
    src.check_keys(data, (), _GLOBAL_KEYS)
    if "models" not in data:
        raise src.error(("models",), "required")
    macros = definitions(src, data.get("macros"), ("macros",))
    top = {k: v for k, v in data.items() if k in _GLOBAL_KEYS - {"models", "macros"}}
    top = expanded(src, top, (), resolve_macros(macros))
    unload_timeout = _optional(top, "unloadTimeout", src.non_negative, 0.0)
    defaults = {
        "ttl": _optional(top, "globalTTL", src.non_negative, 0.0),
        "unload_timeout": unload_timeout or DEFAULT_UNLOAD_TIMEOUT,
        "send_loading_state": _optional(top, "sendLoadingState", src.boolean, False),
    }
    models = {
        model_id: model(src, model_id, raw, macros, defaults)
        for model_id, raw in src.mapping(data["models"], ("models",)).items()
    }
    models.update(peer_models(peers(src, top.get("peers"), resolve_macros(macros)),
                              names(src, models)))
    index = names(src, models)
    matrix, groups, routing_base = routing.residency(src, top, models)
    selectors = routing.selectors(src, top.get("selectors"), index)
    health = _optional(top, "healthCheckTimeout", src.number, DEFAULT_HEALTH_CHECK_TIMEOUT)
    config = SwapperConfig(
        models=models,
        health_check_timeout=max(health, MIN_HEALTH_CHECK_TIMEOUT),
        start_port=_optional(top, "startPort", src.port, None),
        preload=_preload(src, top, index),
        api_keys=_api_keys(src, top.get("apiKeys")),
        matrix=matrix,
        groups=groups,
        memory_budget_mb=_optional(top, "memoryBudgetMB", src.non_negative, 0.0),
        load_wait_timeout=_optional(top, "loadWaitTimeout", src.number, DEFAULT_LOAD_WAIT_TIMEOUT),
        max_queue_wait=_optional(top, "maxQueueWait", src.non_negative, DEFAULT_MAX_QUEUE_WAIT),
        selectors=selectors,
        profiles=routing.profiles(src, top.get("profiles"), index, selectors),
        priority=routing.priority(src, top, index),
        upstream_ignore_paths=_ignore_paths(src, top.get("upstream")),
        include_aliases_in_list=_optional(top, "includeAliasesInList", src.boolean, False),
        session_cache=_session_cache(src, top.get("sessionCache")),
        extra={"unsupported": src.unsupported},
    )
    routing.check_plan(src, config, routing_base)
    return config


def _preload(src: Source, top: Mapping[str, Any], index: Mapping[str, str]) -> tuple[str, ...]:
    hooks = src.section(top.get("hooks"), ("hooks",), {"on_startup"})
    on_startup = src.section(hooks.get("on_startup"), ("hooks", "on_startup"), {"preload"})
    path: YamlPath = ("hooks", "on_startup", "preload")
    preload = [name.strip() for name in src.strings(on_startup.get("preload"), path)]
    for i, name in enumerate(preload):
        if name and name not in index:
            src.report((*path, i), f"unknown model {name!r}, not preloaded")
    return tuple(index[name] for name in preload if name in index)


def _api_keys(src: Source, value: Any) -> tuple[str, ...]:
    keys = src.strings(value, ("apiKeys",))
    for i, key in enumerate(keys):
        if not key or " " in key:
            raise src.error(("apiKeys", i), "API keys must be non-empty, without spaces")
    return keys


def _session_cache(src: Source, value: Any) -> SessionCacheConfig:
    """``sessionCache``: where saved sessions live (``dir``, ``~`` expanded), their cap in GB
    (``maxGB``; 0 or unset: from the disk) and the fewest tokens worth saving (``minTokens``)."""
    path: YamlPath = ("sessionCache",)
    raw = src.section(value, path, _SESSION_CACHE_KEYS)
    directory = _optional(raw, "dir", src.string, "", path)
    return SessionCacheConfig(
        dir=str(Path(directory).expanduser()) if directory else "",
        max_bytes=int(_optional(raw, "maxGB", src.non_negative, 0.0, path) * GB),
        min_tokens=_optional(raw, "minTokens", src.count, DEFAULT_SESSION_MIN_TOKENS, path))


def _ignore_paths(src: Source, value: Any) -> tuple[str, ...]:
    """llama-swap's ``upstream.ignorePaths`` (regular expressions), else its default."""
    path: YamlPath = ("upstream", "ignorePaths")
    upstream = src.section(value, ("upstream",), {"ignorePaths"})
    patterns = src.strings(upstream.get("ignorePaths"), path)
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise src.error((*path, i), f"invalid regular expression: {exc}") from None
    return patterns or DEFAULT_UPSTREAM_IGNORE_PATHS
