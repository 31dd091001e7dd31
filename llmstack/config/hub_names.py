"""The names that become paths in the Hugging Face cache, checked by the hub's own rules.

huggingface_hub lays a file out as ``models--<org>--<name>/blobs/<etag>``,
``snapshots/<commit>/<file>``, ``refs/<revision>`` and ``.locks/<repo>/<etag>.lock``.
The repo id and the file name come from models.ini, the commit and the etag from the
hub's answer (``X-Repo-Commit``, ``X-Linked-Etag`` / ``ETag``): each is checked here
before any path is built from it. Each check returns the value or raises
:class:`UnsafeName` (a ``ValueError``) with a one-line message that quotes the value.
Stdlib only: ``config`` uses it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PureWindowsPath

REPO_ID_MAX = 96
"""Characters in the hub's repo name and in its namespace, each."""
REPO_FILE_MAX = 1000
"""Characters in a file name (its folders included) in a repo."""
NAME_MAX_BYTES = 255
"""Bytes in one folder or file name: what file systems allow."""

_REPO_PART = rf"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{{0,{REPO_ID_MAX - 2}}}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?:{_REPO_PART}/)?{_REPO_PART}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_BLOB_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_ETAG_HEADER = re.compile(r'(?:W/)?"?([0-9a-f]{40}|[0-9a-f]{64})"?')
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""A control character (C0 or DEL): never part of a name or path."""


class UnsafeName(ValueError):
    """A value that would become part of a path is not one of the hub's names."""


def shown(value: str, limit: int = 200) -> str:
    """``value`` quoted for a one-line message (control characters escaped, bounded)."""
    text = repr(value[:limit])
    return text + "..." if len(value) > limit else text


def check_repo_id(value: str) -> str:
    """``name`` or ``namespace/name``: letters, digits, ``-``, ``_``, ``.``, each part 1-96
    characters starting and ending with a letter, digit or ``_``; no ``--``, ``..``, ``.git``
    (huggingface_hub's ``validate_repo_id``)."""
    if not _REPO_ID.fullmatch(value) or "--" in value or ".." in value or value.endswith(".git"):
        raise UnsafeName(f"{shown(value)} is not a hub repo id (org/name: letters, digits, "
                         f"'-', '_', '.', at most {REPO_ID_MAX} each, no '--' or '..')")
    return value


def check_repo_file(value: str) -> str:
    """A file's path in a repo: ``/``-separated names, none empty, ``.`` or ``..``; no
    backslash, control character or drive; at most REPO_FILE_MAX characters."""
    parts = value.split("/")
    problem = (
        "is empty" if not value
        else f"is longer than {REPO_FILE_MAX} characters" if len(value) > REPO_FILE_MAX
        else "is an absolute path" if value.startswith("/")
        else "has a '..' part" if ".." in parts
        else "has an empty or '.' part" if any(p in ("", ".") for p in parts)
        else "has a backslash" if "\\" in value
        else "has a control character" if CONTROL.search(value)
        else "has a drive (C:)" if any(PureWindowsPath(p).drive for p in parts)
        else f"has a part longer than {NAME_MAX_BYTES} bytes"
        if any(len(p.encode()) > NAME_MAX_BYTES for p in parts)
        else ""
    )
    if problem:
        raise UnsafeName(f"{shown(value)} {problem}: expected a file's path in the repo "
                         "such as model-Q4_K_M.gguf or sub/dir/model.gguf")
    return value


def check_commit(value: str, what: str = "commit") -> str:
    """A commit hash: 40 lowercase hex digits."""
    if not _COMMIT.fullmatch(value):
        raise UnsafeName(f"{what} {shown(value)} is not a commit hash (40 hex digits)")
    return value


def check_blob_id(value: str, what: str = "blob id") -> str:
    """A blob's name: the git sha1 (40 hex digits) or, for LFS files, the sha256 (64)."""
    if not _BLOB_ID.fullmatch(value):
        raise UnsafeName(f"{what} {shown(value)} is not a blob id (40 or 64 hex digits)")
    return value


def check_etag_header(value: str) -> str:
    """An ``ETag`` / ``X-Linked-Etag`` header (quoted, maybe weak) that names a blob; the id."""
    match = _ETAG_HEADER.fullmatch(value)
    if match is None:
        raise UnsafeName(f"the hub's ETag {shown(value)} is not a blob id (40 or 64 hex digits)")
    return match.group(1)


def inside(path: Path, root: Path) -> bool:
    """``path`` names something in ``root`` (both made absolute, ``..`` folded, no link followed)."""
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root))


def resolves_inside(path: Path, *roots: Path) -> bool:
    """``path``, every link followed, is in one of ``roots`` (also followed)."""
    target = path.resolve()
    return any(target.is_relative_to(root.resolve()) for root in roots)
