"""Backups of user-edited generated files."""

from __future__ import annotations

import os
from pathlib import Path

from llmstack.project.files import GeneratedFiles


def test_user_edited_file_is_backed_up_before_replacing(tmp_path: Path) -> None:
    generated = GeneratedFiles(tmp_path)
    target = tmp_path / "opencode.json"
    first = generated.write(target, "v1")
    assert first.changed and first.backup is None
    again = generated.write(target, "v1")
    assert not again.changed and again.backup is None
    ours = generated.write(target, "v2")  # we wrote v1, nobody touched it: no backup
    assert ours.changed and ours.backup is None
    target.write_text("v2 + my edit")
    assert generated.edited(target)
    result = generated.write(target, "v3")
    assert result.backup is not None and result.backup.read_text() == "v2 + my edit"
    assert result.backup.name.startswith("opencode.json.") and result.backup.suffix == ".bak"
    assert target.read_text() == "v3" and not generated.edited(target)


def test_a_file_llmstack_never_wrote_counts_as_the_users(tmp_path: Path) -> None:
    target = tmp_path / "opencode.json"
    target.write_text("hand written")
    result = GeneratedFiles(tmp_path).write(target, "generated")
    assert result.backup is not None and result.backup.read_text() == "hand written"


def test_identical_content_needs_no_backup_even_without_a_record(tmp_path: Path) -> None:
    target = tmp_path / "AGENTS.md"
    target.write_text("same")
    assert GeneratedFiles(tmp_path).write(target, "same").backup is None
    assert sorted(os.listdir(tmp_path)) == [".gitignore", "AGENTS.md", "generated.json"]
