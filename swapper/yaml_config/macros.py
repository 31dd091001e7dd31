"""Macros as llama-swap fills them: ``${env.X}`` first (X must be set), then user macros
(global, overridden per model; a macro may use the macros defined before it) and
``${MODEL_ID}``. The runtime macros stay where they are filled later: ``${PORT}`` in
``cmd``, ``proxy`` and ``metadata``, ``${PID}`` in ``cmdStop``; anywhere else a macro
left over is an error."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from .source import Source, YamlPath, scalar_text

RESERVED_MACROS = frozenset({"PID", "PORT", "MODEL_ID"})
_MACRO = re.compile(r"\$\{([a-zA-Z0-9_-]+)\}")
_ENV_MACRO = re.compile(r"\$\{env\.([a-zA-Z_][a-zA-Z0-9_]*)\}")
_MACRO_NAME = re.compile(r"[a-zA-Z0-9_-]{1,63}")
# Model fields where a runtime macro may stay unexpanded.
_RUNTIME_MACROS = {
    "cmd": frozenset({"PORT"}),
    "cmdStop": frozenset({"PID"}),
    "proxy": frozenset({"PORT"}),
    "metadata": frozenset({"PORT"}),  # filled when listed, with the model's port
}


def map_strings(value: Any, path: YamlPath, change: Callable[[str, YamlPath], Any]) -> Any:
    """Copy of ``value`` with ``change(text, path)`` applied to every string in it."""
    if isinstance(value, str):
        return change(value, path)
    if isinstance(value, dict):
        return {str(k): map_strings(v, (*path, str(k)), change) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, (*path, i), change) for i, v in enumerate(value)]
    return value


def substitute(text: str, macros: Mapping[str, Any]) -> Any:
    """Expand known macros in ``text``; a lone ``${name}`` keeps the macro's type."""
    whole = _MACRO.fullmatch(text)
    if whole and whole[1] in macros:
        return macros[whole[1]]
    return _MACRO.sub(lambda m: scalar_text(macros[m[1]]) if m[1] in macros else m[0], text)


def _expand(value: Any, macros: Mapping[str, Any]) -> Any:
    return map_strings(value, (), lambda text, _: substitute(text, macros))


def resolve_macros(macros: Mapping[str, Any]) -> dict[str, Any]:
    """Macro values with the macros defined before each one expanded."""
    resolved: dict[str, Any] = {}
    for name, value in macros.items():
        resolved[name] = _expand(value, resolved)
    return resolved


def strip_comments(command: str) -> str:
    return "\n".join(line for line in command.split("\n") if not line.strip().startswith("#"))


def _macro_problem(name: str) -> str:
    if name == "PORT":
        return "${PORT} is only filled in cmd and proxy"
    if name == "PID":
        return "${PID} is only filled in cmdStop"
    return f"unknown macro '${{{name}}}'"


def with_environment(src: Source, data: Any) -> Any:
    """``data`` with every ``${env.X}`` replaced by X's value; an unset X is an error."""
    def value(match: re.Match[str], path: YamlPath) -> str:
        if match[1] not in os.environ:
            raise src.error(path, f"environment variable {match[1]!r} is not set")
        return os.environ[match[1]]

    return map_strings(data, (), lambda text, path: _ENV_MACRO.sub(
        lambda match: value(match, path), text))


def definitions(src: Source, value: Any, path: YamlPath) -> dict[str, Any]:
    """A ``macros`` mapping, checked: names, reserved names, value types, self-reference."""
    macros = src.mapping(value, path)
    for name, macro in macros.items():
        where = (*path, name)
        if not _MACRO_NAME.fullmatch(name):
            raise src.error(where, "macro names are 1-63 of a-z A-Z 0-9 _ -")
        if name in RESERVED_MACROS:
            raise src.error(where, f"{name} is a reserved macro name")
        if not isinstance(macro, (str, int, float)):
            raise src.error(where, f"expected a string, number or boolean, got {macro!r}")
        if isinstance(macro, str) and f"${{{name}}}" in macro:
            raise src.error(where, "macro refers to itself")
    return macros


def _check_left(src: Source, value: Any, path: YamlPath, allowed: AbstractSet) -> None:
    def check(text: str, where: YamlPath) -> str:
        for match in _MACRO.finditer(text):
            if match[1] not in allowed:
                raise src.error(where, _macro_problem(match[1]))
        return text

    map_strings(value, path, check)


def expanded(src: Source, values: Mapping[str, Any], path: YamlPath, macros: Mapping) -> dict:
    """``values`` with ``macros`` expanded; any other macro left over is an error."""
    result = {}
    for key, value in values.items():
        result[key] = _expand(value, macros)
        _check_left(src, result[key], (*path, key), _RUNTIME_MACROS.get(key, frozenset()))
    return result
