"""Where a project's llmstack files live.

A project is the directory holding ``.llmstack/``: ``$LLMSTACK_WORK_DIR`` when set,
else the nearest directory at or above the current one that has a ``.llmstack/``
(never climbing into or past the home directory), else the current directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..settings import MODELS_INI, Settings

STATE_DIR = ".llmstack"
DEFAULT_MODELS_INI = Path(STATE_DIR) / "models.ini"
"""A project's models.ini, relative to its root."""


@dataclass(frozen=True)
class Project:
    """One project's paths (nothing is created by looking at them)."""

    root: Path
    models_ini_env: Path | None = None
    """``$LLMSTACK_MODELS_INI`` (relative to the current directory): the models.ini instead."""
    opencode_dir: Path | None = None
    """``$OPENCODE_CONFIG_DIR``: where opencode.json goes instead of ``.llmstack/``."""

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def models_ini(self) -> Path:
        """``$LLMSTACK_MODELS_INI``, else .llmstack/models.ini."""
        return self.models_ini_env or self.root / DEFAULT_MODELS_INI

    @property
    def models_ini_from_env(self) -> bool:
        return self.models_ini_env is not None

    @property
    def opencode_json(self) -> Path:
        """``$OPENCODE_CONFIG_DIR/opencode.json`` when that is set, else .llmstack/opencode.json."""
        return (self.opencode_dir or self.state) / "opencode.json"

    @property
    def agents_md(self) -> Path:
        return self.state / "AGENTS.md"

    @property
    def default_channel(self) -> Path:
        return self.state / "default-channel"

    @property
    def active_channel(self) -> Path:
        return self.state / "active-channel"

    def models_ini_to_serve(self, named: Path | None = None, demo: bool = False) -> Path | None:
        """The models.ini a stack of this project serves, None for the built-in demo stack:
        none with ``demo``; a file the user named (``named``, else ``$LLMSTACK_MODELS_INI``),
        which must exist (else a UserError, exit 2); this project's own when it exists."""
        if demo:
            return None
        path = named or self.models_ini
        if path.exists():
            return path
        if named is not None or self.models_ini_from_env:
            where = "" if named is not None else f" (from ${MODELS_INI})"
            raise UserError(f"models.ini not found: {path}{where}", 2)
        return None


def project_at(root: Path, settings: Settings) -> Project:
    """The project in ``root``, with the environment's overrides."""
    return Project(root, settings.models_ini, settings.opencode_config_dir)


def find_project(settings: Settings, cwd: Path | None = None) -> Project:
    """The current project (see the module docstring)."""
    if settings.work_dir is not None:
        return project_at(settings.work_dir, settings)
    here = (cwd or Path.cwd()).resolve()
    home = settings.home.resolve()
    for candidate in (here, *here.parents):
        if candidate != here and (candidate == home or candidate in home.parents):
            break
        if (candidate / STATE_DIR).is_dir():
            return project_at(candidate, settings)
    return project_at(here, settings)
