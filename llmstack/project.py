"""Where a project's state lives: the ``.llmstack/`` directory and its channel markers.

A project is a directory holding ``.llmstack/``. The CLI finds it as the shell hook
does: ``$LLMSTACK_WORK_DIR`` when set, else the nearest ancestor of the current
directory that has ``.llmstack/``, else the current directory (where a first verb
that writes creates it). Channel markers are one line, ``<channel>[ <url>]``, so
shells can ``read -r ch url < file``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".llmstack"
WORK_DIR_ENV = "LLMSTACK_WORK_DIR"
MODELS_INI_ENV = "LLMSTACK_MODELS_INI"
CHANNELS = ("current", "next", "external")


class CliError(Exception):
    """A user-facing failure: printed as one ``[!]`` line, exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def find_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` holding ``.llmstack/``."""
    for directory in (start, *start.parents):
        if (directory / STATE_DIR).is_dir():
            return directory
    return None


def project_dir() -> Path:
    """``$LLMSTACK_WORK_DIR``, else the enclosing project, else the current directory."""
    explicit = os.environ.get(WORK_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    cwd = Path.cwd()
    return find_root(cwd) or cwd


@dataclass(frozen=True)
class Channel:
    """One channel marker: ``current``/``next``, or ``external`` with the remote URL."""

    name: str
    url: str = ""

    def line(self) -> str:
        return f"{self.name} {self.url}".rstrip() + "\n"


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


def read_channel(path: Path) -> Channel | None:
    """The marker at ``path``, or None when it is missing, empty or unknown."""
    try:
        words = path.read_text().split()
    except OSError:
        return None
    if not words or words[0] not in CHANNELS:
        return None
    return Channel(words[0], words[1].rstrip("/") if len(words) > 1 else "")


def default_channel(root: Path) -> Channel:
    """The channel pinned in ``default-channel`` (``current`` when unset)."""
    return read_channel(state_dir(root) / "default-channel") or Channel("current")


def live_channel(root: Path) -> Channel:
    """``active-channel`` (what runs now), else the pinned default."""
    return read_channel(state_dir(root) / "active-channel") or default_channel(root)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_active_channel(root: Path, channel: Channel) -> None:
    write_atomic(state_dir(root) / "active-channel", channel.line())


def clear_active_channel(root: Path) -> None:
    (state_dir(root) / "active-channel").unlink(missing_ok=True)


def models_ini(root: Path) -> Path:
    """``$LLMSTACK_MODELS_INI`` (relative to the project), else ``.llmstack/models.ini``."""
    env = os.environ.get(MODELS_INI_ENV)
    return (root / Path(env).expanduser()) if env else state_dir(root) / "models.ini"
