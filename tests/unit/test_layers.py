"""The import direction, read from the source (every import, lazy ones included):
swapper never imports llmstack; llmstack's packages form layers, each importing only
those before it, and so do the swapper's (its pure core, which does no I/O, then the
effects, the manager, the HTTP edge)."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

LLMSTACK_LAYERS: tuple[frozenset[str] | None, ...] = tuple(map(frozenset, (
    ("__init__", "settings", "errors"), ("config",), ("models",), ("serving",), ("project",),
    ("cli",), ("__main__",))))
"""llmstack's layers, in order (llmstack/__init__.py states them; it holds only the version):
a module may import its own layer and those before it."""
SWAPPER_CORE = frozenset({"__init__", "types", "errors", "config", "solver", "scheduler",
                          "selectors", "stream_protocols", "upstream_path"})
"""The swapper's values and pure logic (what runs is decided here, carried out elsewhere)."""
SWAPPER_EDGE = frozenset({"routes", "front_door", "reply", "loading", "proxy", "observe", "metrics",
                          "listing", "status_api", "http_protocol", "http_app", "server",
                          "__main__"})
"""The HTTP edge and the entry point."""
SWAPPER_LAYERS = (SWAPPER_CORE, None, frozenset({"manager"}), SWAPPER_EDGE)
"""The swapper's layers, in order: the core; the effects (None: every other module: events,
processes, the upstream client, files, sessions, the YAML loader); the manager, which
carries the scheduler's effects out; the HTTP edge."""
LAYERS = {"llmstack": LLMSTACK_LAYERS, "swapper": SWAPPER_LAYERS}
IO_MODULES = frozenset({"asyncio", "os", "socket", "subprocess", "threading", "signal", "select",
                        "selectors", "time", "logging", "pathlib", "shutil", "tempfile", "io",
                        "http", "urllib.request", "psutil", "uvicorn", "httpx", "aiohttp", "yaml"})


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@functools.cache
def imports(path: Path) -> tuple[tuple[int, str], ...]:
    """(line, absolute module name) of every import in ``path``; ``from X import y`` gives
    ``X.y`` when that is a module of ours, else ``X``."""
    return tuple(_imports(path))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield node.lineno, full if is_module(full) else base


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def located(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def layer_of(module: str, layers: tuple[frozenset[str] | None, ...]) -> int:
    """The index of the layer holding ``<package>.<sub>...`` (the package itself is its
    ``__init__``); a None layer holds every module no other names."""
    sub = [*module.split("."), "__init__"][1]
    named = [i for i, layer in enumerate(layers) if layer is not None and sub in layer]
    assert named or None in layers, f"{module} is in no layer: place it in one"
    return named[0] if named else layers.index(None)


def test_swapper_never_imports_llmstack() -> None:
    found = [f"{located(path, line)} imports {target}" for path in sources("swapper")
             for line, target in imports(path) if target.split(".")[0] == "llmstack"]
    assert found == []


@pytest.mark.parametrize("path", [p for package in LAYERS for p in sources(package)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_its_own_layer_and_those_before_it(path: Path) -> None:
    package = module_name(path).split(".")[0]
    layers = LAYERS[package]
    own = layer_of(module_name(path), layers)
    upward = [f"{located(path, line)} imports {target}" for line, target in imports(path)
              if target.split(".")[0] == package and layer_of(target, layers) > own]
    assert upward == [], f"{package}'s layers, in order: {layers}"


@pytest.mark.parametrize("name", sorted(SWAPPER_CORE))
def test_the_swapper_core_does_no_io(name: str) -> None:
    path = ROOT / "swapper" / f"{name}.py"
    io = [f"{located(path, line)} imports {target}" for line, target in imports(path)
          if any(target == m or target.startswith(m + ".") for m in IO_MODULES)]
    assert io == []
