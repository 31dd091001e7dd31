"""Where a project's llmstack files live, and the error type verbs report to the user.

A project is the directory holding ``.llmstack/``: ``$LLMSTACK_WORK_DIR`` when set,
else the nearest directory at or above the current one that has a ``.llmstack/``
(never climbing into or past the home directory), else the current directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".llmstack"
WORK_DIR_ENV = "LLMSTACK_WORK_DIR"
MODELS_INI_ENV = "LLMSTACK_MODELS_INI"
OPENCODE_CONFIG_DIR_ENV = "OPENCODE_CONFIG_DIR"


class UserError(Exception):
    """A problem the user can fix; the CLI prints ``[!] <message>`` and exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Project:
    """One project's paths (nothing is created by looking at them)."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def models_ini(self) -> Path:
        """``$LLMSTACK_MODELS_INI`` (relative to the current directory), else .llmstack/models.ini."""
        env = os.environ.get(MODELS_INI_ENV)
        return Path(env) if env else self.state / "models.ini"

    @property
    def models_ini_from_env(self) -> bool:
        return bool(os.environ.get(MODELS_INI_ENV))

    @property
    def opencode_json(self) -> Path:
        """``$OPENCODE_CONFIG_DIR/opencode.json`` when that is set, else .llmstack/opencode.json."""
        env = os.environ.get(OPENCODE_CONFIG_DIR_ENV)
        return (Path(env).expanduser() if env else self.state) / "opencode.json"

    @property
    def agents_md(self) -> Path:
        return self.state / "AGENTS.md"

    @property
    def default_channel(self) -> Path:
        return self.state / "default-channel"

    @property
    def active_channel(self) -> Path:
        return self.state / "active-channel"


def find_project(cwd: Path | None = None) -> Project:
    """The current project (see the module docstring)."""
    env = os.environ.get(WORK_DIR_ENV)
    if env:
        return Project(Path(env).expanduser().resolve())
    here = (cwd or Path.cwd()).resolve()
    home = Path.home().resolve()
    for candidate in (here, *here.parents):
        if candidate != here and (candidate == home or candidate in home.parents):
            break
        if (candidate / STATE_DIR).is_dir():
            return Project(candidate)
    return Project(here)
