"""The watchdog kills a dead parent's registered children, and nothing it was told to forget."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import pid_alive, wait_until

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the watchdog needs /proc")

# A parent that starts two sleepers, watches both, unwatches the second, prints their pids
# and waits to be killed.
PARENT = """
import subprocess, sys, time
from swapper.watchdog import WATCHDOG
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         start_new_session=True) for _ in range(2)]
for kid in kids:
    WATCHDOG.watch(kid.pid)
WATCHDOG.unwatch(kids[1].pid)
print(kids[0].pid, kids[1].pid, flush=True)
time.sleep(60)
"""


def test_sigkill_of_the_parent_kills_watched_children_only() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    watched, forgotten = map(int, parent.stdout.readline().split())
    try:
        assert pid_alive(watched) and pid_alive(forgotten)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        wait_until(lambda: not pid_alive(watched), 2, "the watched child to be killed")
        assert pid_alive(forgotten)
    finally:
        for pid in (watched, forgotten):  # only the sleepers this test caused
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_dead_watchdog_is_restarted_knowing_every_watched_child() -> None:
    from swapper.watchdog import Watchdog
    dog = Watchdog()
    kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                           start_new_session=True)
    try:
        dog.watch(kid.pid)
        first = dog._proc
        assert first is not None
        first.kill()
        first.wait(5)
        dog.watch(os.getpid() + 10**6)  # any message finds it dead and starts a new one
        assert dog._proc is not first and dog._proc is not None
        assert dog._proc.stdin is not None
        dog._proc.stdin.close()  # as if we had died: the new one kills the child
        kid.wait(5)
        assert kid.returncode == -signal.SIGKILL
    finally:
        kid.kill()
