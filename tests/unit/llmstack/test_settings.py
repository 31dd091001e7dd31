"""settings.py is the one reader of the environment; everything else is handed Settings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import llmstack
from llmstack.errors import UserError
from llmstack.settings import Settings

PACKAGE = Path(llmstack.__file__).parent
ENVIRONMENT = {("os", "environ"), ("os", "getenv"), ("os", "putenv"), ("os", "unsetenv"),
               ("path", "expanduser"), ("path", "expandvars"), ("Path", "home")}


def _reads(tree: ast.AST) -> list[str]:
    """``os.environ``, ``os.getenv``, ``os.path.expanduser`` (``$HOME``), ``Path.home()``, ...
    and ``from os import environ``-style imports of them."""
    found = [f"{node.value.id}.{node.attr}" for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
             and (node.value.id, node.attr) in ENVIRONMENT]
    found += [f"os.path.{node.attr}" for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
              and ("path", node.attr) in ENVIRONMENT]
    found += [f"from os import {alias.name}" for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module in ("os", "os.path")
              for alias in node.names if alias.name in {a for _, a in ENVIRONMENT}]
    return found


def test_only_settings_reads_the_environment() -> None:
    readers = {str(path.relative_to(PACKAGE)): reads for path in PACKAGE.rglob("*.py")
               if (reads := _reads(ast.parse(path.read_text())))}
    assert set(readers) == {"settings.py"}, readers


def test_a_bad_value_is_a_user_error_naming_the_variable() -> None:
    assert Settings({"LLMSTACK_USE_NEXT": " Yes "}).use_next is True
    assert Settings({}).use_next is None
    with pytest.raises(UserError, match=r"\$LLMSTACK_USE_NEXT='perhaps': expected 1"):
        _ = Settings({"LLMSTACK_USE_NEXT": "perhaps"}).use_next


def test_keys_are_parsed_once_here() -> None:
    settings = Settings({"LLMSTACK_API_KEYS": " a, ,b ,"})
    assert settings.api_keys == ("a", "b")
    assert settings.auth_headers == {"Authorization": "Bearer a"}
    assert Settings({}).auth_headers == {}


def test_paths_expand_home_from_the_settings(tmp_path: Path) -> None:
    settings = Settings({"LLMSTACK_CACHE_DIR": "~/c", "HF_HOME": "~/$WHO/hf", "WHO": "me"},
                        home=tmp_path)
    assert settings.cache_dir == tmp_path / "c"
    assert settings.hub_cache == tmp_path / "me" / "hf" / "hub"
    assert Settings({}, home=tmp_path).cache_dir == tmp_path / ".cache" / "llmstack"
