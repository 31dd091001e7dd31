"""Pid records of the children we started, so a crashed swapper's orphans are reaped.

On Linux the watchdog (:mod:`swapper.watchdog`) kills children when the swapper dies;
these records cover macOS and any child that escaped. A record is only acted on
when the live process still runs the same command line, so a reused pid is left
alone: we kill only what we started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path


def _command_line(pid: int) -> list[str] | None:
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.parent.exists():
        with contextlib.suppress(OSError):
            return proc.read_bytes().decode("utf-8", "replace").rstrip("\0").split("\0")
        return None
    try:
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                             text=True, check=False).stdout.strip()
    except OSError:
        return None
    return out.split() if out else None


class ChildRecords:
    """One JSON file per live child: ``<dir>/<pid>.json`` holding its argv."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def remember(self, pid: int, argv: list[str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{pid}.tmp"
        tmp.write_text(json.dumps(argv))
        os.replace(tmp, self.directory / f"{pid}.json")

    def forget(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{pid}.json").unlink()

    def reap(self) -> list[int]:
        """Kill recorded children that still run their recorded command; returns their pids."""
        reaped = []
        for record in self.directory.glob("*.json") if self.directory.exists() else ():
            pid = int(record.stem)
            with contextlib.suppress(OSError, ValueError):
                argv = json.loads(record.read_text())
                if _command_line(pid) == argv:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                    reaped.append(pid)
            record.unlink(missing_ok=True)
        return reaped
