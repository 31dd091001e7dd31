"""A watchdog process that SIGKILLs our children's process groups the moment we die.

It replaces a parent-death signal set in each child through ``preexec_fn``, which
made Python fork instead of vfork (+2.5 ms per spawn in a 50 MB process). One
small interpreter is started at the first spawn; it reads ``+PID`` / ``-PID``
lines from a pipe whose only write end is ours. When this process ends in any
way, SIGKILL included, the pipe reads EOF and the watchdog kills the process
group of every child still registered, then exits. A pid is only killed if it is
still the process that was registered (its start time, from ``/proc``), so a
reused pid is left alone. The microseconds between a spawn and its registration
are covered by the pid records (:mod:`swapper.reaper`) at the next start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

_CODE = r"""
import os, signal
def started(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
watched, rest = {}, b""
while data := os.read(0, 4096):
    *lines, rest = (rest + data).split(b"\n")
    for line in lines:
        pid = int(line[1:])
        if line[:1] == b"+":
            watched[pid] = started(pid)
        else:
            watched.pop(pid, None)
for pid, start in watched.items():
    if start is not None and started(pid) == start:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def _bare_environment() -> dict[str, str]:
    """The watchdog's environment: nothing of ours (API keys, tokens), only what the
    interpreter itself may need to start (its shared libraries)."""
    return {k: v for k, v in os.environ.items() if k == "LD_LIBRARY_PATH"}


class Watchdog:
    """Registers children with the watchdog process, starting (or restarting) it as needed."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._pids: set[int] = set()

    def watch(self, pid: int) -> None:
        """Kill ``pid``'s process group if this process dies before :meth:`unwatch`."""
        self._pids.add(pid)
        self._send(f"+{pid}\n")

    def unwatch(self, pid: int) -> None:
        if pid in self._pids:
            self._pids.discard(pid)
            self._send(f"-{pid}\n")

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.write(line.encode())
                return
        self._start()

    def _start(self) -> None:
        """A fresh watchdog that knows every child still registered (in its own session,
        so a Ctrl-C meant for us does not end it early)."""
        if self._proc is not None:  # it has died: reap it
            with contextlib.suppress(OSError):
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            self._proc.poll()
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _CODE], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, bufsize=0,
            start_new_session=True, close_fds=True, env=_bare_environment())
        assert self._proc.stdin is not None
        self._proc.stdin.write("".join(f"+{pid}\n" for pid in self._pids).encode())


WATCHDOG = Watchdog() if os.path.isdir("/proc") else None
"""The process-wide watchdog (Linux: it needs ``/proc`` to recognise a reused pid)."""
