"""Atomic writes and never-overwrite creation (``swapper.small_files``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swapper import small_files
from swapper.small_files import create_atomic, write_atomic


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two" and os.listdir(tmp_path) == ["a.json"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(small_files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_create_atomic_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "models.ini"
    assert create_atomic(target, "first")
    assert not create_atomic(target, "second")
    assert target.read_text() == "first" and os.listdir(tmp_path) == ["models.ini"]
