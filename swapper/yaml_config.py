"""Load an existing llama-swap ``config.yaml`` into a :class:`SwapperConfig`.

Keys keep llama-swap's meaning. ``${env.X}`` is substituted first (loading
fails if X is unset), then user macros (global, overridden per model; a macro
may use macros defined before it) and ``${MODEL_ID}``. ``${PORT}`` stays in
place for the spawner to fill (in ``cmd`` and ``proxy``; in ``metadata`` when
listed) and ``${PID}`` stays in ``cmdStop``. Commands are split with
:mod:`shlex`, never run by a shell.

llama-swap's routing keys load too: ``selectors``, ``profiles``, ``peers``
(:mod:`swapper.peers`), ``filters.setParamsByID``, ``capabilities``,
``includeAliasesInList`` and fifo ``priority``. Where llama-swap's own example is
only illustrative, this loader is more tolerant: a preload, selector target,
profile pin, priority or group member naming an undefined model is reported
and ignored rather than fatal.

Extensions: ``memoryBudgetMB``, ``loadWaitTimeout``, ``maxQueueWait`` and
``sendLoadingState`` (global), ``memoryMB`` and ``sendLoadingState`` (per model), and
``bodyIdle`` in a model's ``timeouts`` block (beside llama-swap's ``connect`` and
``responseHeader``; seconds, 0 = none). Keys the
loader does not support are listed, with their path, in
``config.extra["unsupported"]``; the rest of the config still loads.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import yaml

from .config import (
    DEFAULT_CONCURRENCY_LIMIT,
    DEFAULT_HEALTH_CHECK_TIMEOUT,
    DEFAULT_LOAD_WAIT_TIMEOUT,
    DEFAULT_MAX_QUEUE_WAIT,
    DEFAULT_UNLOAD_TIMEOUT,
    PORT_MACRO,
    ConfigError,
    Filters,
    Group,
    Matrix,
    ModelSpec,
    Profile,
    Selector,
    SwapperConfig,
    Timeouts,
)
from .peers import Peer, peer_models
from .small_files import CONFIG_LIMIT, read_small
from .solver import compile_plan

MIN_HEALTH_CHECK_TIMEOUT = 15.0
USE_GLOBAL_TTL = -1
RESERVED_MACROS = frozenset({"PID", "PORT", "MODEL_ID"})
PROTECTED_PARAMS = frozenset({"model"})

_MACRO = re.compile(r"\$\{([a-zA-Z0-9_-]+)\}")
_ENV_MACRO = re.compile(r"\$\{env\.([a-zA-Z_][a-zA-Z0-9_]*)\}")
_MACRO_NAME = re.compile(r"[a-zA-Z0-9_-]{1,63}")

_GLOBAL_KEYS = frozenset({
    "models", "macros", "healthCheckTimeout", "startPort", "globalTTL", "unloadTimeout",
    "hooks", "apiKeys", "matrix", "groups", "routing", "memoryBudgetMB", "loadWaitTimeout",
    "maxQueueWait", "sendLoadingState", "selectors", "profiles", "peers", "includeAliasesInList",
    "upstream",
})
# llama-swap's default upstream.ignorePaths: static files a model's web UI asks for.
DEFAULT_UPSTREAM_IGNORE_PATHS = (r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$",)
_MODEL_KEYS = frozenset({
    "cmd", "cmdStop", "proxy", "checkEndpoint", "ttl", "unloadTimeout", "aliases", "unlisted",
    "env", "useModelName", "filters", "concurrencyLimit", "name", "description", "metadata",
    "macros", "memoryMB", "sendLoadingState", "timeouts", "capabilities",
})
_MODALITIES = frozenset({"text", "audio", "image"})
_STRATEGIES = ("warm", "pin", "spillover")
_TIMEOUT_KEYS = {"connect": "connect", "responseHeader": "response", "bodyIdle": "idle"}
# Model fields where a runtime macro may stay unexpanded.
_RUNTIME_MACROS = {
    "cmd": frozenset({"PORT"}),
    "cmdStop": frozenset({"PID"}),
    "proxy": frozenset({"PORT"}),
    "metadata": frozenset({"PORT"}),  # filled when listed, with the model's port
}

YamlPath = tuple[str | int, ...]


def load_yaml_config(path: str | os.PathLike[str]) -> SwapperConfig:
    """Read and validate a llama-swap ``config.yaml`` (a regular file of at most
    :data:`~swapper.small_files.CONFIG_LIMIT` bytes; else an OSError, one line)."""
    return parse_yaml_config(read_small(Path(path), CONFIG_LIMIT).decode("utf-8"), str(path))


def parse_yaml_config(text: str, source_name: str = "<config>") -> SwapperConfig:
    """Validate llama-swap YAML ``text``; errors name ``source_name``, line and key path."""
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source_name) from exc
    return _Loader(source_name, lines).load(data)


# --------------------------------------------------------------------------- helpers


def _key_lines(node: yaml.Node | None, path: YamlPath = ()) -> dict[YamlPath, int]:
    """1-based line of every mapping key and sequence item, by path."""
    lines: dict[YamlPath, int] = {}
    if isinstance(node, yaml.MappingNode):
        children = [((*path, str(key.value)), key, value) for key, value in node.value]
    elif isinstance(node, yaml.SequenceNode):
        children = [((*path, i), item, item) for i, item in enumerate(node.value)]
    else:
        return lines
    for child_path, marked, child in children:
        lines[child_path] = marked.start_mark.line + 1
        lines.update(_key_lines(child, child_path))
    return lines


def _dotted(path: YamlPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def _text(value: Any) -> str:
    """A scalar as it reads in YAML (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _map_strings(value: Any, path: YamlPath, change: Callable[[str, YamlPath], Any]) -> Any:
    """Copy of ``value`` with ``change(text, path)`` applied to every string in it."""
    if isinstance(value, str):
        return change(value, path)
    if isinstance(value, dict):
        return {str(k): _map_strings(v, (*path, str(k)), change) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, (*path, i), change) for i, v in enumerate(value)]
    return value


def _substitute(text: str, macros: Mapping[str, Any]) -> Any:
    """Expand known macros in ``text``; a lone ``${name}`` keeps the macro's type."""
    whole = _MACRO.fullmatch(text)
    if whole and whole[1] in macros:
        return macros[whole[1]]
    return _MACRO.sub(lambda m: _text(macros[m[1]]) if m[1] in macros else m[0], text)


def _expand(value: Any, macros: Mapping[str, Any]) -> Any:
    return _map_strings(value, (), lambda text, _: _substitute(text, macros))


def _resolve_macros(macros: Mapping[str, Any]) -> dict[str, Any]:
    """Macro values with the macros defined before each one expanded."""
    resolved: dict[str, Any] = {}
    for name, value in macros.items():
        resolved[name] = _expand(value, resolved)
    return resolved


def _strip_comments(command: str) -> str:
    return "\n".join(line for line in command.split("\n") if not line.strip().startswith("#"))


def _join_continuations(command: str) -> str:
    """Turn a trailing backslash into a space, as llama-swap does."""
    lines = command.split("\n")
    return "\n".join(
        line.strip()[:-1] + " " if line.strip().endswith("\\") else line for line in lines
    )


def _macro_problem(name: str) -> str:
    if name == "PORT":
        return "${PORT} is only filled in cmd and proxy"
    if name == "PID":
        return "${PID} is only filled in cmdStop"
    return f"unknown macro '${{{name}}}'"


# --------------------------------------------------------------------------- loader


class _Loader:
    """One load: knows the source for error messages and collects warnings."""

    def __init__(self, source: str, lines: Mapping[YamlPath, int]) -> None:
        self._source = source
        self._lines = lines
        self._unsupported: list[str] = []
        self._scope: Mapping[str, Any] = {}  # macros of the model being read
        self._models: Mapping[str, ModelSpec] = {}  # every model, once read

    # ------------------------------------------------------------------ reporting

    def _location(self, path: YamlPath) -> str:
        while path and path not in self._lines:
            path = path[:-1]
        return f"{self._source}:{self._lines[path]}" if path else self._source

    def _error(self, path: YamlPath, message: str) -> ConfigError:
        return ConfigError(f"{_dotted(path)}: {message}" if path else message, self._location(path))

    def _report(self, path: YamlPath, why: str = "not supported, ignored") -> None:
        self._unsupported.append(f"{_dotted(path)}: {why}")

    def _check_keys(self, mapping: Mapping[str, Any], path: YamlPath, known: AbstractSet) -> None:
        for key in mapping:
            if key not in known:
                self._report((*path, key))

    # ------------------------------------------------------------------ typed values

    def _mapping(self, value: Any, path: YamlPath) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._error(path, f"expected a mapping, got {value!r}")
        return value

    def _string(self, value: Any, path: YamlPath) -> str:
        if not isinstance(value, (str, int, float)):
            raise self._error(path, f"expected a string, got {value!r}")
        return _text(value)

    def _strings(self, value: Any, path: YamlPath) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self._error(path, f"expected a list, got {value!r}")
        return tuple(self._string(item, (*path, i)) for i, item in enumerate(value))

    def _boolean(self, value: Any, path: YamlPath) -> bool:
        if not isinstance(value, bool):
            raise self._error(path, f"expected true or false, got {value!r}")
        return value

    def _number(self, value: Any, path: YamlPath) -> float:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise self._error(path, f"expected a number, got {value!r}")
        return number

    def _non_negative(self, value: Any, path: YamlPath) -> float:
        number = self._number(value, path)
        if number < 0:
            raise self._error(path, f"must be >= 0, got {value!r}")
        return number

    def _count(self, value: Any, path: YamlPath) -> int:
        number = self._non_negative(value, path)
        if number != int(number):
            raise self._error(path, f"expected a whole number, got {value!r}")
        return int(number)

    def _command(self, value: Any, path: YamlPath) -> tuple[str, ...]:
        try:
            argv = shlex.split(_join_continuations(self._string(value, path)))
        except ValueError as exc:
            raise self._error(path, f"cannot split command: {exc}") from None
        if not argv:
            raise self._error(path, "empty command")
        return tuple(argv)

    # ------------------------------------------------------------------ macros

    def _env_macros(self, text: str, path: YamlPath) -> str:
        def value(match: re.Match[str]) -> str:
            if match[1] not in os.environ:
                raise self._error(path, f"environment variable {match[1]!r} is not set")
            return os.environ[match[1]]

        return _ENV_MACRO.sub(value, text)

    def _macro_definitions(self, value: Any, path: YamlPath) -> dict[str, Any]:
        macros = self._mapping(value, path)
        for name, macro in macros.items():
            where = (*path, name)
            if not _MACRO_NAME.fullmatch(name):
                raise self._error(where, "macro names are 1-63 of a-z A-Z 0-9 _ -")
            if name in RESERVED_MACROS:
                raise self._error(where, f"{name} is a reserved macro name")
            if not isinstance(macro, (str, int, float)):
                raise self._error(where, f"expected a string, number or boolean, got {macro!r}")
            if isinstance(macro, str) and f"${{{name}}}" in macro:
                raise self._error(where, "macro refers to itself")
        return macros

    def _check_macros_left(self, value: Any, path: YamlPath, allowed: AbstractSet) -> None:
        def check(text: str, where: YamlPath) -> str:
            for match in _MACRO.finditer(text):
                if match[1] not in allowed:
                    raise self._error(where, _macro_problem(match[1]))
            return text

        _map_strings(value, path, check)

    def _expanded(self, values: Mapping[str, Any], path: YamlPath, macros: Mapping) -> dict:
        """``values`` with ``macros`` expanded; any other macro left over is an error."""
        result = {}
        for key, value in values.items():
            result[key] = _expand(value, macros)
            allowed = _RUNTIME_MACROS.get(key, frozenset())
            self._check_macros_left(result[key], (*path, key), allowed)
        return result

    # ------------------------------------------------------------------ models

    def _model(self, model_id: str, raw: Any, macros: Mapping, defaults: Mapping) -> ModelSpec:
        path: YamlPath = ("models", model_id)
        raw = self._mapping(raw, path)
        self._check_keys(raw, path, _MODEL_KEYS)
        own = self._macro_definitions(raw.get("macros"), (*path, "macros"))
        scope = _resolve_macros({"MODEL_ID": model_id, **macros, **own})
        fields = {k: v for k, v in raw.items() if k in _MODEL_KEYS - {"macros"} and v is not None}
        for key in ("cmd", "cmdStop"):
            if isinstance(fields.get(key), str):
                fields[key] = _strip_comments(fields[key])
        fields = self._expanded(fields, path, scope)
        self._scope = scope
        if "cmd" not in fields:
            raise self._error((*path, "cmd"), "required")
        spec = ModelSpec(id=model_id, **self._model_fields(fields, path, defaults))
        if PORT_MACRO in spec.proxy and not spec.needs_port_in_cmd:
            if "proxy" in fields:
                raise self._error((*path, "proxy"), "uses ${PORT} but cmd does not; "
                                  "set the proxy URL")
            self._report((*path, "cmd"), "does not use ${PORT} and no proxy is set: "
                         "requests to this model will fail until proxy names its port")
        return spec

    def _model_fields(self, fields: Mapping, path: YamlPath, defaults: Mapping) -> dict:
        """ModelSpec keyword arguments for the present ``fields``."""
        parsers: dict[str, tuple[str, Callable[[Any, YamlPath], Any]]] = {
            "cmd": ("cmd", self._command),
            "cmdStop": ("cmd_stop", self._command),
            "proxy": ("proxy", self._string),
            "checkEndpoint": ("check_endpoint", self._string),
            "ttl": ("ttl", self._ttl),
            "unloadTimeout": ("unload_timeout", self._non_negative),
            "aliases": ("aliases", self._strings),
            "unlisted": ("unlisted", self._boolean),
            "env": ("env", self._env),
            "useModelName": ("use_model_name", self._string),
            "filters": ("filters", self._filters),
            "concurrencyLimit": ("concurrency_limit", self._count),
            "name": ("name", self._string),
            "description": ("description", self._string),
            "metadata": ("metadata", self._mapping),
            "memoryMB": ("memory_mb", self._non_negative),
            "sendLoadingState": ("send_loading_state", self._boolean),
            "timeouts": ("timeouts", self._timeouts),
            "capabilities": ("capabilities", self._capabilities),
        }
        values = {parsers[k][0]: parsers[k][1](v, (*path, k)) for k, v in fields.items()}
        ttl, unload = values.get("ttl", USE_GLOBAL_TTL), values.get("unload_timeout", 0)
        values["ttl"] = defaults["ttl"] if ttl == USE_GLOBAL_TTL else ttl
        values["unload_timeout"] = unload or defaults["unload_timeout"]
        values["concurrency_limit"] = values.get("concurrency_limit") or DEFAULT_CONCURRENCY_LIMIT
        values.setdefault("send_loading_state", defaults["send_loading_state"])
        return values

    def _ttl(self, value: Any, path: YamlPath) -> float:
        ttl = self._number(value, path)
        if ttl < 0 and ttl != USE_GLOBAL_TTL:
            raise self._error(path, f"must be >= 0 (or -1 for globalTTL), got {value!r}")
        return ttl

    def _timeouts(self, value: Any, path: YamlPath) -> Timeouts:
        raw = self._section(value, path, _TIMEOUT_KEYS.keys())
        return Timeouts(**{field: self._non_negative(raw[key], (*path, key))
                           for key, field in _TIMEOUT_KEYS.items() if raw.get(key) is not None})

    def _capabilities(self, value: Any, path: YamlPath) -> dict[str, Any]:
        raw = self._section(value, path, {"in", "out", "tools", "reranker", "context"})
        caps: dict[str, Any] = {}
        for key in ("in", "out"):
            if raw.get(key) is not None:
                caps[key] = list(self._strings(raw[key], (*path, key)))
                for i, modality in enumerate(caps[key]):
                    if modality not in _MODALITIES:
                        raise self._error((*path, key, i), f"unknown modality {modality!r} "
                                          "(text, audio or image)")
        for key in ("tools", "reranker"):
            if raw.get(key) is not None:
                caps[key] = self._boolean(raw[key], (*path, key))
        if raw.get("context") is not None:
            caps["context"] = self._count(raw["context"], (*path, "context"))
        return caps

    def _env(self, value: Any, path: YamlPath) -> dict[str, str]:
        env = {}
        for i, entry in enumerate(self._strings(value, path)):
            name, equals, text = entry.partition("=")
            if not name or not equals:
                raise self._error((*path, i), f"expected NAME=value, got {entry!r}")
            env[name] = text
        return env

    def _filters(self, value: Any, path: YamlPath) -> Filters:
        raw = self._mapping(value, path)
        self._check_keys(raw, path,
                         frozenset({"stripParams", "strip_params", "setParams", "setParamsByID"}))
        key = "stripParams" if raw.get("stripParams") else "strip_params"
        strip = self._string(raw.get(key) or "", (*path, key)).split(",")
        set_params = self._mapping(raw.get("setParams"), (*path, "setParams"))
        by_id = self._mapping(raw.get("setParamsByID"), (*path, "setParamsByID"))
        return Filters(
            strip_params=tuple(sorted({p.strip() for p in strip} - {""} - PROTECTED_PARAMS)),
            set_params={k: v for k, v in set_params.items() if k not in PROTECTED_PARAMS},
            set_params_by_id={
                str(_substitute(key, self._scope)): {
                    k: v for k, v in self._mapping(params, (*path, "setParamsByID", key)).items()
                    if k not in PROTECTED_PARAMS}
                for key, params in by_id.items()},
        )

    def _names(self, models: Mapping[str, ModelSpec]) -> dict[str, str]:
        """Model id for every model id and alias; aliases are globally unique."""
        names = {model_id: model_id for model_id in models}
        for spec in models.values():
            by_id = [(("filters", "setParamsByID", key), key)
                     for key in spec.filters.set_params_by_id if key != spec.id]
            for where, alias in [(("aliases", i), a) for i, a in enumerate(spec.aliases)] + by_id:
                if alias in names:
                    owner = "a model id" if names[alias] == alias else f"an alias of {names[alias]}"
                    raise self._error(("models", spec.id, *where), f"{alias!r} is {owner}")
                names[alias] = spec.id
        return names

    # ------------------------------------------------------------------ routing

    def _routing(self, top: Mapping) -> tuple[Matrix | None, tuple[Group, ...], YamlPath]:
        """(matrix, groups, path of their parent) from legacy keys or ``routing``."""
        routing = self._section(top.get("routing"), ("routing",), {"router", "scheduler"})
        scheduler = self._section(routing.get("scheduler"), ("routing", "scheduler"),
                                  {"use", "settings"})
        if scheduler.get("use", "fifo") != "fifo":
            raise self._error(("routing", "scheduler", "use"), "the only scheduler is fifo")
        router = self._section(routing.get("router"), ("routing", "router"), {"use", "settings"})
        base: YamlPath = ("routing", "router", "settings")
        settings = self._section(router.get("settings"), base, {"groups", "matrix"})
        legacy = top.get("matrix") is not None or bool(top.get("groups"))
        modern = router.get("use") or settings.get("matrix") is not None or settings.get("groups")
        if legacy and modern:
            raise self._error(
                ("routing",),
                "cannot be used with the legacy top-level 'matrix'/'groups' keys; "
                "move them under routing.router.settings",
            )
        if legacy:
            return self._matrix(top.get("matrix"), ("matrix",)), self._groups(top, ()), ()
        use = router.get("use") or "group"
        if use not in ("group", "matrix"):
            raise self._error(("routing", "router", "use"), f"unknown router {use!r}")
        unused = "groups" if use == "matrix" else "matrix"
        if settings.get(unused):
            self._report((*base, unused), f"unused because routing.router.use is {use}, ignored")
        if use == "group":
            return None, self._groups(settings, base), base
        if settings.get("matrix") is None:
            raise self._error((*base, "matrix"), "required when routing.router.use is matrix")
        return self._matrix(settings["matrix"], (*base, "matrix")), (), base

    def _section(self, value: Any, path: YamlPath, known: AbstractSet) -> dict[str, Any]:
        section = self._mapping(value, path)
        self._check_keys(section, path, known)
        return section

    def _matrix(self, value: Any, path: YamlPath) -> Matrix | None:
        if value is None:
            return None
        raw = self._section(value, path, {"vars", "evict_costs", "sets"})

        def table(key: str, parse: Callable[[Any, YamlPath], Any]) -> dict[str, Any]:
            entries = self._mapping(raw.get(key), (*path, key))
            return {name: parse(entry, (*path, key, name)) for name, entry in entries.items()}

        return Matrix(
            vars=table("vars", self._string),
            evict_costs=table("evict_costs", self._count),
            sets=table("sets", self._string),
        )

    def _groups(self, parent: Mapping, base: YamlPath) -> tuple[Group, ...]:
        path = (*base, "groups")
        return tuple(
            self._group(name, value, (*path, name))
            for name, value in self._mapping(parent.get("groups"), path).items()
        )

    def _group(self, name: str, value: Any, path: YamlPath) -> Group:
        raw = self._section(value, path, {"swap", "exclusive", "persistent", "members"})
        defaults = {"swap": True, "exclusive": True, "persistent": False}
        flags = {k: self._boolean(raw.get(k, v), (*path, k)) for k, v in defaults.items()}
        members = self._strings(raw.get("members"), (*path, "members"))
        for i, member in enumerate(members):
            if member not in self._models:
                self._report((*path, "members", i), f"undefined model {member!r}, ignored")
        return Group(name, tuple(m for m in members if m in self._models), **flags)

    # ------------------------------------------------------------------ globals

    def _preload(self, top: Mapping, names: Mapping[str, str]) -> tuple[str, ...]:
        hooks = self._section(top.get("hooks"), ("hooks",), {"on_startup"})
        on_startup = self._section(hooks.get("on_startup"), ("hooks", "on_startup"), {"preload"})
        path: YamlPath = ("hooks", "on_startup", "preload")
        preload = [name.strip() for name in self._strings(on_startup.get("preload"), path)]
        for i, name in enumerate(preload):
            if name and name not in names:
                self._report((*path, i), f"unknown model {name!r}, not preloaded")
        return tuple(names[name] for name in preload if name in names)

    def _api_keys(self, value: Any) -> tuple[str, ...]:
        keys = self._strings(value, ("apiKeys",))
        for i, key in enumerate(keys):
            if not key or " " in key:
                raise self._error(("apiKeys", i), "API keys must be non-empty, without spaces")
        return keys

    def _optional(self, top: Mapping, key: str, parse: Callable[..., Any], default: Any) -> Any:
        return default if top.get(key) is None else parse(top[key], (key,))

    def load(self, data: Any) -> SwapperConfig:
        if not isinstance(data, dict):
            raise self._error((), "expected a mapping with a 'models' key")
        data = _map_strings(data, (), self._env_macros)
        self._check_keys(data, (), _GLOBAL_KEYS)
        if "models" not in data:
            raise self._error(("models",), "required")
        macros = self._macro_definitions(data.get("macros"), ("macros",))
        top = {k: v for k, v in data.items() if k in _GLOBAL_KEYS - {"models", "macros"}}
        top = self._expanded(top, (), _resolve_macros(macros))
        unload_timeout = self._optional(top, "unloadTimeout", self._non_negative, 0.0)
        defaults = {
            "ttl": self._optional(top, "globalTTL", self._non_negative, 0.0),
            "unload_timeout": unload_timeout or DEFAULT_UNLOAD_TIMEOUT,
            "send_loading_state": self._optional(top, "sendLoadingState", self._boolean, False),
        }
        models = {
            model_id: self._model(model_id, raw, macros, defaults)
            for model_id, raw in self._mapping(data["models"], ("models",)).items()
        }
        peers = peer_models(self._peers(top.get("peers")), self._names(models))
        models.update(peers)
        self._models = models
        names = self._names(models)
        matrix, groups, routing_base = self._routing(top)
        selectors = self._selectors(top.get("selectors"), names)
        health = self._optional(
            top, "healthCheckTimeout", self._number, DEFAULT_HEALTH_CHECK_TIMEOUT
        )
        config = SwapperConfig(
            models=models,
            health_check_timeout=max(health, MIN_HEALTH_CHECK_TIMEOUT),
            start_port=self._optional(top, "startPort", self._port, None),
            preload=self._preload(top, names),
            api_keys=self._api_keys(top.get("apiKeys")),
            matrix=matrix,
            groups=groups,
            memory_budget_mb=self._optional(top, "memoryBudgetMB", self._non_negative, 0.0),
            load_wait_timeout=self._optional(top, "loadWaitTimeout", self._number,
                                             DEFAULT_LOAD_WAIT_TIMEOUT),
            max_queue_wait=self._optional(top, "maxQueueWait", self._non_negative,
                                          DEFAULT_MAX_QUEUE_WAIT),
            selectors=selectors,
            profiles=self._profiles(top.get("profiles"), names, selectors),
            priority=self._priority(top, names),
            upstream_ignore_paths=self._ignore_paths(top.get("upstream")),
            include_aliases_in_list=self._optional(top, "includeAliasesInList", self._boolean,
                                                   False),
            extra={"unsupported": self._unsupported},
        )
        self._compile(config, routing_base)
        return config

    # ------------------------------------------------------------------ llama-swap routing keys

    def _peers(self, value: Any) -> list[Peer]:
        peers = []
        for peer_id, raw in self._mapping(value, ("peers",)).items():
            path: YamlPath = ("peers", peer_id)
            raw = self._section(raw, path, {"proxy", "apiKey", "models", "timeouts", "filters"})
            if not raw.get("proxy"):
                raise self._error((*path, "proxy"), "required")
            filters = self._filters(raw["filters"], (*path, "filters")) if raw.get(
                "filters") else Filters()
            timeouts = self._timeouts(raw["timeouts"], (*path, "timeouts")) if raw.get(
                "timeouts") else Timeouts()
            peers.append(Peer(peer_id, self._string(raw["proxy"], (*path, "proxy")),
                              self._strings(raw.get("models"), (*path, "models")),
                              self._string(raw.get("apiKey") or "", (*path, "apiKey")),
                              timeouts, filters))
        return peers

    def _selectors(self, value: Any, names: Mapping[str, str]) -> dict[str, Selector]:
        """llama-swap's checks, except that undefined targets are warned and dropped."""
        selectors: dict[str, Selector] = {}
        entries = self._mapping(value, ("selectors",))
        for sel_id, raw in entries.items():
            path: YamlPath = ("selectors", sel_id)
            raw = self._section(raw, path, {"strategy", "targets", "settings", "name",
                                            "description", "unlisted", "metadata"})
            if sel_id in names:
                what = "model id" if names[sel_id] == sel_id else "model alias"
                raise self._error(path, f"name conflicts with {what} {sel_id!r}")
            strategy = raw.get("strategy")
            if strategy not in _STRATEGIES:
                raise self._error((*path, "strategy"), f"expected one of {', '.join(_STRATEGIES)}"
                                  f", got {strategy!r}")
            targets = self._strings(raw.get("targets"), (*path, "targets"))
            if not targets:
                raise self._error((*path, "targets"), "must contain at least one entry")
            kept = []
            for i, target in enumerate(targets):
                if target in entries:
                    raise self._error((*path, "targets", i),
                                      f"references selector {target!r}; selectors do not chain")
                if target not in names:
                    self._report((*path, "targets", i), f"undefined model {target!r}, ignored")
                else:
                    kept.append(target)
            settings = self._section(raw.get("settings"), (*path, "settings"), {"spillover"})
            spillover = self._count(settings.get("spillover", 1), (*path, "settings", "spillover"))
            if spillover < 1:
                raise self._error((*path, "settings", "spillover"), "must be >= 1")
            selectors[sel_id] = Selector(
                sel_id, strategy, tuple(kept), spillover,
                self._string(raw.get("name") or "", (*path, "name")),
                self._string(raw.get("description") or "", (*path, "description")),
                self._boolean(raw.get("unlisted", False), (*path, "unlisted")),
                self._mapping(raw.get("metadata"), (*path, "metadata")))
        return selectors

    def _profiles(self, value: Any, names: Mapping[str, str],
                  selectors: Mapping[str, Selector]) -> dict[str, Profile]:
        profiles: dict[str, Profile] = {}
        for name, raw in self._mapping(value, ("profiles",)).items():
            path: YamlPath = ("profiles", name)
            if isinstance(raw, list):
                self._report(path, "legacy list syntax (llama-swap no longer supports it), "
                             "ignored; use description and pins")
                continue
            raw = self._section(raw, path, {"description", "pins"})
            pins: dict[str, str | None] = {}
            for pin, target in self._mapping(raw.get("pins"), (*path, "pins")).items():
                if target is None or target == "":
                    pins[pin] = None
                elif str(target) in names or str(target) in selectors:
                    pins[pin] = str(target)
                else:
                    self._report((*path, "pins", pin), f"undefined model {target!r}, ignored")
            if not raw.get("pins"):
                raise self._error((*path, "pins"), "must contain at least one entry")
            profiles[name] = Profile(name, self._string(raw.get("description") or "",
                                                        (*path, "description")), pins)
        return profiles

    def _ignore_paths(self, value: Any) -> tuple[str, ...]:
        path: YamlPath = ("upstream", "ignorePaths")
        upstream = self._section(value, ("upstream",), {"ignorePaths"})
        patterns = self._strings(upstream.get("ignorePaths"), path)
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise self._error((*path, i), f"invalid regular expression: {exc}") from None
        return patterns or DEFAULT_UPSTREAM_IGNORE_PATHS

    def _priority(self, top: Mapping, names: Mapping[str, str]) -> dict[str, int]:
        path: YamlPath = ("routing", "scheduler", "settings")
        routing = top.get("routing") or {}
        settings = self._section((routing.get("scheduler") or {}).get("settings"), path, {"fifo"})
        fifo = self._section(settings.get("fifo"), (*path, "fifo"), {"priority"})
        priority: dict[str, int] = {}
        for model, rank in self._mapping(fifo.get("priority"), (*path, "fifo", "priority")).items():
            where = (*path, "fifo", "priority", model)
            if not isinstance(rank, int) or isinstance(rank, bool):
                raise self._error(where, f"expected a whole number, got {rank!r}")
            if model in names:
                priority[names[model]] = rank
            else:
                self._report(where, f"undefined model {model!r}, ignored")
        return priority

    def _port(self, value: Any, path: YamlPath) -> int:
        port = self._count(value, path)
        if not 1 <= port <= 65535:
            raise self._error(path, f"must be a TCP port, got {value!r}")
        return port

    def _compile(self, config: SwapperConfig, routing_base: YamlPath) -> None:
        """Compile the residency plan now so a bad matrix fails at load."""
        try:
            compile_plan(config)
        except ConfigError as exc:
            parts: YamlPath = tuple(exc.where.split(".")) if exc.where else ()
            if parts[:1] in (("matrix",), ("groups",)):
                parts = (*routing_base, *parts)
            raise ConfigError(str(exc), self._location(parts)) from None
