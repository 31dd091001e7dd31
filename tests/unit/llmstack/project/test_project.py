"""Finding the project: $LLMSTACK_WORK_DIR, else the nearest .llmstack/ above, never past home."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmstack.project.paths import find_project
from llmstack.settings import Settings


def test_nearest_state_dir_above_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = tmp_path / "home" / "proj"
    (root / ".llmstack").mkdir(parents=True)
    deep = root / "a" / "b"
    deep.mkdir(parents=True)
    assert find_project(Settings.read(), deep).root == root
    elsewhere = tmp_path / "home" / "other"
    elsewhere.mkdir()
    assert find_project(Settings.read(), elsewhere).root == elsewhere  # none above: the current directory


def test_home_state_dir_is_not_inherited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".llmstack").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    fresh = home / "fresh"
    fresh.mkdir()
    assert find_project(Settings.read(), fresh).root == fresh  # `setup` here must not configure ~/.llmstack
    assert find_project(Settings.read(), home).root == home


def test_work_dir_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSTACK_WORK_DIR", str(tmp_path / "w"))
    assert find_project(Settings.read(), tmp_path).root == (tmp_path / "w").resolve()
    monkeypatch.setenv("LLMSTACK_MODELS_INI", "custom.ini")
    assert find_project(Settings.read(), tmp_path).models_ini == Path("custom.ini")
    monkeypatch.setenv("OPENCODE_CONFIG_DIR", str(tmp_path / "oc"))
    assert find_project(Settings.read(), tmp_path).opencode_json == tmp_path / "oc" / "opencode.json"
