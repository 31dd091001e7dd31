"""Writing the files llmstack generates: atomically, and never losing a user's edits.

Every generated file is written to a temporary file in the same directory and then
``os.replace``d into place, so a reader sees the old or the new file, never half of
one. The sha256 of what llmstack last wrote to each path is kept in
``.llmstack/generated.json``; a file whose content no longer matches that record
(or that llmstack never wrote) was edited by someone else, so it is copied to
``<name>.<timestamp>.bak`` before it is replaced.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from swapper.small_files import create_atomic, read_json, write_atomic

RECORD_NAME = "generated.json"
STATE_GITIGNORE = """\
# Written by llmstack when it created this directory; never rewritten, edit it freely.
# models.ini is meant to be committed. The rest is this machine's: logs, the pid record
# and lock, channel markers, the generated opencode.json and AGENTS.md (and their .bak
# copies), litellm_config.yaml (it may hold keys: add !litellm_config.yaml to commit it).
*
!.gitignore
!models.ini
"""


def ensure_state_dir(state: Path) -> None:
    """Create a project's ``.llmstack/`` with its ``.gitignore`` (:data:`STATE_GITIGNORE`)
    where either is missing; an existing ``.gitignore`` is never touched."""
    state.mkdir(parents=True, exist_ok=True)
    create_atomic(state / ".gitignore", STATE_GITIGNORE)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Written:
    """What :func:`write_generated` did to one file."""

    path: Path
    changed: bool
    """False when the file already held exactly this text."""
    backup: Path | None = None
    """Where the user's edited version was kept, if it was."""


class GeneratedFiles:
    """Writes generated files, remembering their hashes in ``<state_dir>/generated.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.record_path = state_dir / RECORD_NAME

    def _record(self) -> dict[str, str]:
        try:
            data = read_json(self.record_path)
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def edited(self, path: Path) -> bool:
        """Whether ``path`` exists with content llmstack did not write there last."""
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            return False
        return self._record().get(str(path.resolve())) != _digest(current)

    def write(self, path: Path, text: str) -> Written:
        """Write ``text`` to ``path``; back up a user-edited previous version first."""
        ensure_state_dir(self.record_path.parent)
        new = text.encode("utf-8")
        try:
            old: bytes | None = path.read_bytes()
        except FileNotFoundError:
            old = None
        record, key, digest = self._record(), str(path.resolve()), _digest(new)
        backup = None
        if old is not None and old != new and record.get(key) != _digest(old):  # edited
            backup = _backup_name(path)
            write_atomic(backup, old)
        if old != new:
            write_atomic(path, new)
        if record.get(key) != digest:
            record[key] = digest
            write_atomic(self.record_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return Written(path, old != new, backup)


def _backup_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.{stamp}.bak")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{stamp}-{n}.bak")
        n += 1
    return candidate
