"""``models`` and ``peers``: one :class:`~swapper.config.ModelSpec` per model (its macros
filled, its fields typed), peer models, and the name of every model and alias."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..config import DEFAULT_CONCURRENCY_LIMIT, PORT_MACRO, Filters, ModelSpec, Timeouts
from ..peers import Peer
from .macros import definitions, expanded, resolve_macros, strip_comments, substitute
from .source import Source, YamlPath

USE_GLOBAL_TTL = -1
PROTECTED_PARAMS = frozenset({"model"})
MODEL_KEYS = frozenset({
    "cmd", "cmdStop", "proxy", "checkEndpoint", "ttl", "unloadTimeout", "aliases", "unlisted",
    "env", "useModelName", "filters", "concurrencyLimit", "name", "description", "metadata",
    "macros", "memoryMB", "sendLoadingState", "timeouts", "capabilities", "sessionCache",
})
_MODALITIES = frozenset({"text", "audio", "image"})
_TIMEOUT_KEYS = {"connect": "connect", "responseHeader": "response", "bodyIdle": "idle"}


def model(src: Source, model_id: str, raw: Any, macros: Mapping[str, Any],
          defaults: Mapping[str, Any]) -> ModelSpec:
    """``models.<model_id>``: its own macros over the global ``macros``, then its fields;
    ``defaults`` are the global ttl, unload timeout and loading-state switch."""
    path: YamlPath = ("models", model_id)
    raw = src.mapping(raw, path)
    src.check_keys(raw, path, MODEL_KEYS)
    own = definitions(src, raw.get("macros"), (*path, "macros"))
    scope = resolve_macros({"MODEL_ID": model_id, **macros, **own})
    fields = {k: v for k, v in raw.items() if k in MODEL_KEYS - {"macros"} and v is not None}
    for key in ("cmd", "cmdStop"):
        if isinstance(fields.get(key), str):
            fields[key] = strip_comments(fields[key])
    fields = expanded(src, fields, path, scope)
    if "cmd" not in fields:
        raise src.error((*path, "cmd"), "required")
    spec = ModelSpec(id=model_id, **_fields(src, fields, path, defaults, scope))
    if PORT_MACRO in spec.proxy and not spec.needs_port_in_cmd:
        if "proxy" in fields:
            raise src.error((*path, "proxy"), "uses ${PORT} but cmd does not; "
                            "set the proxy URL")
        src.report((*path, "cmd"), "does not use ${PORT} and no proxy is set: "
                   "requests to this model will fail until proxy names its port")
    return spec


def _fields(src: Source, fields: Mapping[str, Any], path: YamlPath, defaults: Mapping[str, Any],
            scope: Mapping[str, Any]) -> dict[str, Any]:
    """ModelSpec keyword arguments for the present ``fields`` (``scope``: the model's macros)."""
    parsers: dict[str, tuple[str, Callable[[Any, YamlPath], Any]]] = {
        "cmd": ("cmd", src.command),
        "cmdStop": ("cmd_stop", src.command),
        "proxy": ("proxy", src.string),
        "checkEndpoint": ("check_endpoint", src.string),
        "ttl": ("ttl", lambda value, where: _ttl(src, value, where)),
        "unloadTimeout": ("unload_timeout", src.non_negative),
        "aliases": ("aliases", src.strings),
        "unlisted": ("unlisted", src.boolean),
        "env": ("env", lambda value, where: _env(src, value, where)),
        "useModelName": ("use_model_name", src.string),
        "filters": ("filters", lambda value, where: filters(src, value, where, scope)),
        "concurrencyLimit": ("concurrency_limit", src.count),
        "name": ("name", src.string),
        "description": ("description", src.string),
        "metadata": ("metadata", src.mapping),
        "memoryMB": ("memory_mb", src.non_negative),
        "sendLoadingState": ("send_loading_state", src.boolean),
        "timeouts": ("timeouts", lambda value, where: timeouts(src, value, where)),
        "capabilities": ("capabilities", lambda value, where: _capabilities(src, value, where)),
        "sessionCache": ("session_cache", src.boolean),
    }
    values = {parsers[k][0]: parsers[k][1](v, (*path, k)) for k, v in fields.items()}
    ttl, unload = values.get("ttl", USE_GLOBAL_TTL), values.get("unload_timeout", 0)
    values["ttl"] = defaults["ttl"] if ttl == USE_GLOBAL_TTL else ttl
    values["unload_timeout"] = unload or defaults["unload_timeout"]
    values["concurrency_limit"] = values.get("concurrency_limit") or DEFAULT_CONCURRENCY_LIMIT
    values.setdefault("send_loading_state", defaults["send_loading_state"])
    return values


def _ttl(src: Source, value: Any, path: YamlPath) -> float:
    ttl = src.number(value, path)
    if ttl < 0 and ttl != USE_GLOBAL_TTL:
        raise src.error(path, f"must be >= 0 (or -1 for globalTTL), got {value!r}")
    return ttl


def timeouts(src: Source, value: Any, path: YamlPath) -> Timeouts:
    raw = src.section(value, path, _TIMEOUT_KEYS.keys())
    return Timeouts(**{field: src.non_negative(raw[key], (*path, key))
                       for key, field in _TIMEOUT_KEYS.items() if raw.get(key) is not None})


def _capabilities(src: Source, value: Any, path: YamlPath) -> dict[str, Any]:
    raw = src.section(value, path, {"in", "out", "tools", "reranker", "context"})
    caps: dict[str, Any] = {}
    for key in ("in", "out"):
        if raw.get(key) is not None:
            caps[key] = list(src.strings(raw[key], (*path, key)))
            for i, modality in enumerate(caps[key]):
                if modality not in _MODALITIES:
                    raise src.error((*path, key, i), f"unknown modality {modality!r} "
                                    "(text, audio or image)")
    for key in ("tools", "reranker"):
        if raw.get(key) is not None:
            caps[key] = src.boolean(raw[key], (*path, key))
    if raw.get("context") is not None:
        caps["context"] = src.count(raw["context"], (*path, "context"))
    return caps


def _env(src: Source, value: Any, path: YamlPath) -> dict[str, str]:
    env = {}
    for i, entry in enumerate(src.strings(value, path)):
        name, equals, text = entry.partition("=")
        if not name or not equals:
            raise src.error((*path, i), f"expected NAME=value, got {entry!r}")
        env[name] = text
    return env


def filters(src: Source, value: Any, path: YamlPath, scope: Mapping[str, Any]) -> Filters:
    """A ``filters`` block; ``scope``'s macros fill its ``setParamsByID`` keys."""
    raw = src.mapping(value, path)
    src.check_keys(raw, path,
                   frozenset({"stripParams", "strip_params", "setParams", "setParamsByID"}))
    key = "stripParams" if raw.get("stripParams") else "strip_params"
    strip = src.string(raw.get(key) or "", (*path, key)).split(",")
    set_params = src.mapping(raw.get("setParams"), (*path, "setParams"))
    by_id = src.mapping(raw.get("setParamsByID"), (*path, "setParamsByID"))
    return Filters(
        strip_params=tuple(sorted({p.strip() for p in strip} - {""} - PROTECTED_PARAMS)),
        set_params={k: v for k, v in set_params.items() if k not in PROTECTED_PARAMS},
        set_params_by_id={
            str(substitute(key, scope)): {
                k: v for k, v in src.mapping(params, (*path, "setParamsByID", key)).items()
                if k not in PROTECTED_PARAMS}
            for key, params in by_id.items()},
    )


def peers(src: Source, value: Any, scope: Mapping[str, Any]) -> list[Peer]:
    """The ``peers`` block (``scope``: the global macros)."""
    found = []
    for peer_id, raw in src.mapping(value, ("peers",)).items():
        path: YamlPath = ("peers", peer_id)
        raw = src.section(raw, path, {"proxy", "apiKey", "models", "timeouts", "filters"})
        if not raw.get("proxy"):
            raise src.error((*path, "proxy"), "required")
        peer_filters = filters(src, raw["filters"], (*path, "filters"), scope) if raw.get(
            "filters") else Filters()
        peer_timeouts = timeouts(src, raw["timeouts"], (*path, "timeouts")) if raw.get(
            "timeouts") else Timeouts()
        found.append(Peer(peer_id, src.string(raw["proxy"], (*path, "proxy")),
                          src.strings(raw.get("models"), (*path, "models")),
                          src.string(raw.get("apiKey") or "", (*path, "apiKey")),
                          peer_timeouts, peer_filters))
    return found


def names(src: Source, models: Mapping[str, ModelSpec]) -> dict[str, str]:
    """Model id for every model id and alias; aliases are globally unique."""
    index = {model_id: model_id for model_id in models}
    for spec in models.values():
        by_id = [(("filters", "setParamsByID", key), key)
                 for key in spec.filters.set_params_by_id if key != spec.id]
        for where, alias in [(("aliases", i), a) for i, a in enumerate(spec.aliases)] + by_id:
            if alias in index:
                owner = "a model id" if index[alias] == alias else f"an alias of {index[alias]}"
                raise src.error(("models", spec.id, *where), f"{alias!r} is {owner}")
            index[alias] = spec.id
    return index
