"""Whether a pid is still the process we recorded: its create time and command line.

A pid the kernel has since given to another process has another create time, so a
record (a server's pid record, a child's record) is only ever acted on while the
process it names lives: we signal only what we started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil

CREATE_TIME_SLACK = 0.05  # seconds; psutil derives it from boot time + ticks


@dataclass(frozen=True)
class Identity:
    """A process as recorded: pid and create time."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> Identity:
        """The live process ``pid`` (psutil.Error when it is gone)."""
        return cls(pid, psutil.Process(pid).create_time())

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time}


def verify(pid: int, create_time: float,
           cmdline: list[str] | None = None) -> tuple[psutil.Process | None, str]:
    """The live process with this pid, create time (and command line, when given),
    or None and why not."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            live_time, status = proc.create_time(), proc.status()
            live_cmdline = proc.cmdline() if cmdline is not None else None
    except psutil.NoSuchProcess:
        return None, f"pid {pid} no longer exists"
    except psutil.AccessDenied:
        return None, f"pid {pid} now belongs to another user"
    if status == psutil.STATUS_ZOMBIE:
        return None, f"pid {pid} has exited"
    if abs(live_time - create_time) > CREATE_TIME_SLACK or live_cmdline != cmdline:
        return None, f"pid {pid} now belongs to another process ({describe(proc)})"
    return proc, ""


def describe(proc: psutil.Process) -> str:
    """``name (pid N): command line`` for messages, tolerant of a vanishing process."""
    try:
        with proc.oneshot():
            line = " ".join(proc.cmdline()) or proc.name()
            return f"{proc.name()} (pid {proc.pid}): {line[:160]}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"pid {proc.pid}"
