"""One YAML file being read: where each key is (for ``file:line`` errors), the warnings
collected so far, and readers of typed values that fail with the key's path."""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import yaml

from ..config import ConfigError

YamlPath = tuple[str | int, ...]
"""A key's path from the document's root: mapping keys and sequence indexes."""


def key_lines(node: yaml.Node | None, path: YamlPath = ()) -> dict[YamlPath, int]:
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
        lines.update(key_lines(child, child_path))
    return lines


def dotted(path: YamlPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def scalar_text(value: Any) -> str:
    """A scalar as it reads in YAML (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _join_continuations(command: str) -> str:
    """Turn a trailing backslash into a space, as llama-swap does."""
    lines = command.split("\n")
    return "\n".join(
        line.strip()[:-1] + " " if line.strip().endswith("\\") else line for line in lines
    )


class Source:
    """One load of ``source``: its keys' ``lines``, and the keys reported unsupported."""

    def __init__(self, source: str, lines: Mapping[YamlPath, int]) -> None:
        self.source = source
        self._lines = lines
        self.unsupported: list[str] = []

    # ------------------------------------------------------------------ reporting

    def location(self, path: YamlPath) -> str:
        """``file:line`` of the nearest key on ``path`` that has a line (else the file)."""
        while path and path not in self._lines:
            path = path[:-1]
        return f"{self.source}:{self._lines[path]}" if path else self.source

    def error(self, path: YamlPath, message: str) -> ConfigError:
        return ConfigError(f"{dotted(path)}: {message}" if path else message, self.location(path))

    def report(self, path: YamlPath, why: str = "not supported, ignored") -> None:
        self.unsupported.append(f"{dotted(path)}: {why}")

    def check_keys(self, mapping: Mapping[str, Any], path: YamlPath, known: AbstractSet) -> None:
        for key in mapping:
            if key not in known:
                self.report((*path, key))

    # ------------------------------------------------------------------ typed values

    def mapping(self, value: Any, path: YamlPath) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {value!r}")
        return value

    def section(self, value: Any, path: YamlPath, known: AbstractSet) -> dict[str, Any]:
        """A mapping whose keys outside ``known`` are reported."""
        section = self.mapping(value, path)
        self.check_keys(section, path, known)
        return section

    def string(self, value: Any, path: YamlPath) -> str:
        if not isinstance(value, (str, int, float)):
            raise self.error(path, f"expected a string, got {value!r}")
        return scalar_text(value)

    def strings(self, value: Any, path: YamlPath) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(path, f"expected a list, got {value!r}")
        return tuple(self.string(item, (*path, i)) for i, item in enumerate(value))

    def boolean(self, value: Any, path: YamlPath) -> bool:
        if not isinstance(value, bool):
            raise self.error(path, f"expected true or false, got {value!r}")
        return value

    def number(self, value: Any, path: YamlPath) -> float:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise self.error(path, f"expected a number, got {value!r}")
        return number

    def non_negative(self, value: Any, path: YamlPath) -> float:
        number = self.number(value, path)
        if number < 0:
            raise self.error(path, f"must be >= 0, got {value!r}")
        return number

    def count(self, value: Any, path: YamlPath) -> int:
        number = self.non_negative(value, path)
        if number != int(number):
            raise self.error(path, f"expected a whole number, got {value!r}")
        return int(number)

    def port(self, value: Any, path: YamlPath) -> int:
        port = self.count(value, path)
        if not 1 <= port <= 65535:
            raise self.error(path, f"must be a TCP port, got {value!r}")
        return port

    def command(self, value: Any, path: YamlPath) -> tuple[str, ...]:
        """A command line split as a shell would (never run by one); trailing backslashes
        join lines."""
        try:
            argv = shlex.split(_join_continuations(self.string(value, path)))
        except ValueError as exc:
            raise self.error(path, f"cannot split command: {exc}") from None
        if not argv:
            raise self.error(path, "empty command")
        return tuple(argv)
