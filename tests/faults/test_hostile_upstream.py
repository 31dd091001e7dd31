"""The hostile upstream's process-level tricks work as other tests rely on them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port, pid_alive, wait_until
from tests.hostile_upstream import HERE, exchange, http_request


def test_log_flood_and_a_grandchild_that_escapes_the_process_group(tmp_path: Path) -> None:
    port, pidfile = free_port(), tmp_path / "grandchild.pid"
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        child = subprocess.Popen([sys.executable, str(HERE), "--port", str(port), "--log-flood",
                                  "2000000", "--setsid-grandchild", str(pidfile)], stdout=out)
    try:
        wait_until(lambda: b"listening" in log.read_bytes(), 10, "the listening line")
        wait_until(pidfile.exists, 10, "the grandchild's pid")
        grandchild = int(pidfile.read_text())
        assert os.getsid(grandchild) == grandchild != os.getsid(child.pid)
        assert max(map(len, log.read_bytes().splitlines())) == 2_000_000
        assert exchange(port, http_request("GET", "/health")).status == 200
    finally:
        child.kill()
        child.wait()
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
            wait_until(lambda: not pid_alive(int(pidfile.read_text())), 5, "the grandchild gone")
