"""The runtime directory: one server's lock and the records of the children it started.

A server claims its runtime directory (:meth:`ChildRecords.claim`) with an exclusive
lock held for its whole life; a second server on the same directory is refused
with one line naming the holder, and touches nothing. Each child has a record
``children/<pid>.json`` naming it (pid, create time, argv) and its owner (the
server's pid and create time), so the next server reaps the orphans of a crashed
one. On Linux the watchdog (:mod:`swapper.watchdog`) kills children when the swapper
dies; these records cover macOS and any child that escaped.

A record is acted on only when its owner is gone, and then only signals a process
whose create time and command line are those recorded: we kill only what we
started, and only once the server that started it no longer runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .identity import Identity, describe, verify
from .small_files import UnreadableFile, read_json, try_lock

LOCK_NAME = "lock"


class RuntimeDirBusy(Exception):
    """Another live server holds the runtime directory; ``str()`` is one line naming it."""


@dataclass(frozen=True)
class ChildRecord:
    """One child as recorded: itself, its command line, and the server that started it."""

    child: Identity
    argv: list[str]
    owner: Identity

    @classmethod
    def parse(cls, data: Any) -> ChildRecord:
        """A record from its JSON document; ValueError when it is not one."""
        try:
            record = cls(_identity(data["pid"], data["create_time"]), data["argv"],
                         _identity(data["owner"]["pid"], data["owner"]["create_time"]))
        except (KeyError, TypeError):
            raise ValueError("not a child record") from None
        if not (isinstance(record.argv, list) and all(isinstance(a, str) for a in record.argv)):
            raise ValueError("argv is not a list of strings")
        return record


def _identity(pid: Any, create_time: Any) -> Identity:
    if type(pid) is not int or not 0 < pid < 2**31:
        raise ValueError(f"pid {pid!r} is not a process id")
    if type(create_time) not in (int, float) or not 0 <= create_time < float("inf"):
        raise ValueError(f"create time {create_time!r} is not a time")
    return Identity(pid, float(create_time))


class ChildRecords:
    """One JSON file per live child: ``<dir>/<pid>.json``, owned by this process."""

    def __init__(self, directory: Path, lock_fd: int | None = None) -> None:
        self.directory = directory
        self.owner = Identity.of(os.getpid())
        self._lock_fd = lock_fd

    @classmethod
    def claim(cls, runtime_dir: Path) -> ChildRecords:
        """Lock ``runtime_dir`` for this process; its records live in ``children/``.

        Raises :class:`RuntimeDirBusy` (another server holds it) or
        :class:`~swapper.small_files.UnreadableFile` (its lock is not a regular file).
        """
        runtime_dir.mkdir(parents=True, exist_ok=True)
        path = runtime_dir / LOCK_NAME
        fd = try_lock(path)
        if fd is None:
            raise RuntimeDirBusy(f"{runtime_dir} is held by {_holder(path)}")
        records = cls(runtime_dir / "children", fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(records.owner.as_dict()).encode())
        return records

    def release(self) -> None:
        """Give up the runtime directory's lock (it also ends with the process)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def remember(self, child: Identity, argv: list[str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{child.pid}.tmp"
        record = {**child.as_dict(), "argv": argv, "owner": self.owner.as_dict()}
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.directory / f"{child.pid}.json")

    def forget(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{pid}.json").unlink()

    def reap(self) -> list[int]:
        """Kill the recorded children of servers that are gone; returns their pids.

        A record whose owner still runs is left alone; one that is not a record is
        deleted without signalling anything.
        """
        reaped = []
        for path in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else ():
            try:
                record: ChildRecord | None = ChildRecord.parse(read_json(path))
            except FileNotFoundError:
                continue
            except (UnreadableFile, ValueError):
                record = None
            if record is not None:
                if verify(record.owner.pid, record.owner.create_time)[0] is not None:
                    continue  # its server runs: not ours to touch
                child = record.child
                if verify(child.pid, child.create_time, record.argv)[0] is not None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.pid, signal.SIGKILL)
                    reaped.append(child.pid)
            with contextlib.suppress(OSError):
                path.unlink()
        return reaped


def _holder(lock: Path) -> str:
    """Who holds the lock, as its record names it: ``name (pid N): argv [cwd DIR]``."""
    try:
        data = read_json(lock)
        owner = _identity(data["pid"], data["create_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (starting)"
    proc, _ = verify(owner.pid, owner.create_time)
    if proc is None:
        return f"pid {owner.pid}"
    with contextlib.suppress(psutil.Error):
        return f"{describe(proc)} [cwd {proc.cwd()}]"
    return describe(proc)
