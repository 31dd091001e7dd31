"""Children a crashed swapper left behind are reaped at the next start; nothing else is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from swapper.reaper import ChildRecords, _command_line
from tests.conftest import pid_alive, wait_until


def spawn_sleeper() -> subprocess.Popen[bytes]:
    """A child whose command line is visible (it reads empty for a moment after exec)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    wait_until(lambda: _command_line(child.pid) == child.args, 5, "the child's command line")
    return child


def test_a_recorded_child_still_running_its_command_is_killed(tmp_path: Path) -> None:
    child = spawn_sleeper()
    records = ChildRecords(tmp_path)
    records.remember(child.pid, child.args)
    try:
        assert records.reap() == [child.pid]
        child.wait(5)
        assert child.returncode is not None and not list(tmp_path.glob("*.json"))
    finally:
        child.kill()


def test_a_reused_pid_running_something_else_is_left_alone(tmp_path: Path) -> None:
    child = spawn_sleeper()
    records = ChildRecords(tmp_path)
    records.remember(child.pid, ["llama-server", "-m", "model.gguf"])  # not what runs there now
    try:
        assert records.reap() == []
        assert pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()


def test_forgotten_children_are_not_touched(tmp_path: Path) -> None:
    child = spawn_sleeper()
    records = ChildRecords(tmp_path)
    records.remember(child.pid, child.args)
    records.forget(child.pid)
    try:
        assert records.reap() == [] and pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    wait_until(lambda: not pid_alive(child.pid), 5, "the sleeper to exit")
