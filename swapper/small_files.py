"""Reading the small files a server acts on: records and configs, bounded.

Every record (pid records, child records, channel markers) and config file is read
with :func:`read_small`: only a regular file (a symlink is followed to one) is
opened, without blocking, and at most ``limit`` bytes are read. A FIFO, a device
such as ``/dev/zero``, a directory, or a file over the limit is one
:class:`UnreadableFile` line, never a hang or an unbounded read.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

RECORD_LIMIT = 64 * 1024
"""Bytes a record may have (pid records, child records, markers)."""
CONFIG_LIMIT = 1024 * 1024
"""Bytes a config file may have (models.ini, config.yaml, litellm_config.yaml)."""

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))
_OPEN_FLAGS = os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


class UnreadableFile(OSError):
    """A file that cannot be used; ``str()`` is one line naming it."""


class NotRegularFile(UnreadableFile):
    """A FIFO, a device, a directory or a socket where a regular file belongs."""


class TooLarge(UnreadableFile):
    """A regular file over its size limit."""


def size_text(limit: int) -> str:
    """``64 KiB``, ``1 MiB``: a limit as the messages and the README state it."""
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if limit >= size and limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit} bytes"


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a file")
        raise NotRegularFile(f"{path}: not a regular file ({kind})")


def read_small(path: Path, limit: int) -> bytes:
    """The bytes of regular file ``path``, which may have at most ``limit`` of them.

    FileNotFoundError when it does not exist; :class:`NotRegularFile`, :class:`TooLarge`
    or :class:`UnreadableFile` (permissions, a symlink loop, ...) otherwise, one line each.
    """
    try:
        _require_regular(path, os.stat(path).st_mode)  # nothing else is even opened
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except (FileNotFoundError, UnreadableFile):
        raise
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        _require_regular(path, os.fstat(fd).st_mode)  # it may have been swapped meanwhile
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except UnreadableFile:
        raise
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise TooLarge(f"{path}: larger than {size_text(limit)}")
    return b"".join(chunks)


def read_json(path: Path, limit: int = RECORD_LIMIT) -> Any:
    """The JSON document in ``path`` (:func:`read_small`'s errors); ValueError when it is
    not JSON, or nested too deeply to parse."""
    data = read_small(path, limit)
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def open_lock(path: Path) -> int:
    """A descriptor of lock file ``path``, created if missing (not inherited by children).

    :class:`NotRegularFile` when ``path`` is not a regular file: a FIFO there must not
    block the open, a device must not be locked instead.
    """
    try:
        if path.exists():
            _require_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o644)
    except UnreadableFile:
        raise
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        _require_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def try_lock(path: Path) -> int | None:
    """Lock file ``path`` (:func:`open_lock`) held exclusively by this process: its
    descriptor (closing it releases the lock), or None when another process holds it. Any
    other failure of the lock closes the descriptor and raises (an ``OSError``)."""
    fd = open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _staged(path: Path, data: str | bytes, mode: int) -> Path:
    """``data`` written and synced to a temp file beside ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` in one step (temp file + fsync + os.replace)."""
    tmp = _staged(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> bool:
    """Create ``path`` complete in one step; False (nothing written) if it already exists."""
    if path.exists():
        return False
    tmp = _staged(path, data, mode)
    try:
        os.link(tmp, path)  # unlike os.replace, refuses to replace an existing file
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True
