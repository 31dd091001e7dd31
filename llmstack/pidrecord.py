"""The pid record of a project's running stack: ``.llmstack/daemon.json``.

It holds the serve process's pid, its create time and command line (so a pid the
kernel has since given to another process is recognised as stale, never
signalled), the URL it serves and where it logs. Written atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from .files import write_atomic
from .project import Project

RECORD_NAME = "daemon.json"
_CREATE_TIME_SLACK = 0.05  # seconds; psutil derives it from boot time + ticks


@dataclass(frozen=True)
class PidRecord:
    pid: int
    create_time: float
    cmdline: list[str]
    host: str
    port: int
    log_dir: str
    demo: bool = False
    channel: str = "current"
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return url_for(self.host, self.port)


def url_for(host: str, port: int) -> str:
    """The address clients use for a bind address (a wildcard bind is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def record_path(root: Path) -> Path:
    return Project(root).state / RECORD_NAME


def read_record(root: Path) -> PidRecord | None:
    """The record, or None when there is none (an unreadable one counts as none)."""
    try:
        data = json.loads(record_path(root).read_text())
        return PidRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_record(root: Path, record: PidRecord) -> None:
    write_atomic(record_path(root), json.dumps(asdict(record), indent=1) + "\n")


def remove_record(root: Path, pid: int | None = None) -> None:
    """Delete the record (only if it still names ``pid``, when given)."""
    if pid is not None:
        current = read_record(root)
        if current is not None and current.pid != pid:
            return
    record_path(root).unlink(missing_ok=True)


def record_for(pid: int, argv: list[str] | None = None, **fields: Any) -> PidRecord:
    """A record of the live process ``pid``; ``argv``: what it was just exec'd with.

    A child's command line is read as ``argv`` rather than from the kernel: right after
    ``Popen`` returns, ``/proc/<pid>/cmdline`` can still be empty (the exec is not done
    setting up the new image), while the create time is fixed at fork.
    """
    proc = psutil.Process(pid)
    cmdline = list(argv) if argv is not None else proc.cmdline()
    return PidRecord(pid=pid, create_time=proc.create_time(), cmdline=cmdline, **fields)


def verify(record: PidRecord) -> tuple[psutil.Process | None, str]:
    """The live process the record names, or None and why the record is stale."""
    try:
        proc = psutil.Process(record.pid)
        create_time, cmdline, status = proc.create_time(), proc.cmdline(), proc.status()
    except psutil.NoSuchProcess:
        return None, f"pid {record.pid} no longer exists"
    except psutil.AccessDenied:
        return None, f"pid {record.pid} now belongs to another user"
    if status == psutil.STATUS_ZOMBIE:
        return None, f"pid {record.pid} has exited"
    if abs(create_time - record.create_time) > _CREATE_TIME_SLACK or cmdline != record.cmdline:
        return None, f"pid {record.pid} now belongs to another process ({describe(proc)})"
    return proc, ""


def describe(proc: psutil.Process) -> str:
    """``name (pid N): command line`` for messages, tolerant of a vanishing process."""
    try:
        with proc.oneshot():
            line = " ".join(proc.cmdline()) or proc.name()
            return f"{proc.name()} (pid {proc.pid}): {line[:160]}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"pid {proc.pid}"
