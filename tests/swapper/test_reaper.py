"""Children a crashed swapper left behind are reaped at the next start; nothing else is.

A record is acted on only when the server that wrote it (its owner) is gone, and then
only signals a pid whose create time and command line are the recorded ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from swapper.identity import Identity
from swapper.reaper import ChildRecords, RuntimeDirBusy
from tests.conftest import pid_alive, wait_until

SLEEP = "import time; time.sleep(60)"


def spawn_sleeper(code: str = SLEEP) -> subprocess.Popen[bytes]:
    """A child whose command line is visible (it reads empty for a moment after exec)."""
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    wait_until(lambda: psutil.Process(child.pid).cmdline() == child.args, 5,
               "the child's command line")
    return child


def gone_owner() -> Identity:
    """A server that has exited: the identity of a process that ran and was reaped."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return Identity(int(done.stdout), 1.0)


def orphan_records(directory: Path, owner: Identity) -> ChildRecords:
    """Records written by ``owner`` (a server that may have exited since)."""
    records = ChildRecords(directory)
    records.owner = owner
    return records


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = spawn_sleeper()
    yield child
    child.kill()
    child.wait()


def test_an_orphan_still_running_its_command_is_killed(tmp_path: Path,
                                                       sleeper: subprocess.Popen[bytes]) -> None:
    orphan_records(tmp_path, gone_owner()).remember(Identity.of(sleeper.pid), sleeper.args)
    assert ChildRecords(tmp_path).reap() == [sleeper.pid]
    sleeper.wait(5)
    assert sleeper.returncode is not None and not list(tmp_path.glob("*.json"))


def test_a_live_servers_child_is_left_alone(tmp_path: Path,
                                            sleeper: subprocess.Popen[bytes]) -> None:
    """The second server on a directory must not reap what the first one runs."""
    owner = spawn_sleeper("import time; time.sleep(60)  # the first server")
    try:
        orphan_records(tmp_path, Identity.of(owner.pid)).remember(Identity.of(sleeper.pid),
                                                                  sleeper.args)
        assert ChildRecords(tmp_path).reap() == []
        assert pid_alive(sleeper.pid) and list(tmp_path.glob("*.json"))
    finally:
        owner.kill()
        owner.wait()
    assert ChildRecords(tmp_path).reap() == [sleeper.pid]  # its server is gone now


def test_a_reused_pid_is_left_alone(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    records = orphan_records(tmp_path, gone_owner())
    live = Identity.of(sleeper.pid)
    records.remember(live, ["llama-server", "-m", "model.gguf"])  # another command line
    assert ChildRecords(tmp_path).reap() == []
    records.remember(Identity(live.pid, live.create_time - 60), sleeper.args)  # another start
    assert ChildRecords(tmp_path).reap() == []
    assert pid_alive(sleeper.pid) and not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("content", [
    "", "[1, 2]", '{"pid": -1}', '{"pid": "1", "create_time": 0, "argv": [], "owner": {}}',
    "[" * 100_000, '{"pid": 1, "create_time": 1e999, "argv": [], "owner": {"pid": 1}}',
])
def test_a_record_that_is_not_one_is_dropped_and_nothing_signalled(
        tmp_path: Path, sleeper: subprocess.Popen[bytes], content: str) -> None:
    (tmp_path / f"{sleeper.pid}.json").write_text(content)
    (tmp_path / "not-a-pid.json").write_text(json.dumps(sleeper.args))
    assert ChildRecords(tmp_path).reap() == []
    assert pid_alive(sleeper.pid) and not list(tmp_path.glob("*.json"))


def test_forgotten_children_are_not_touched(tmp_path: Path,
                                            sleeper: subprocess.Popen[bytes]) -> None:
    records = orphan_records(tmp_path, gone_owner())
    records.remember(Identity.of(sleeper.pid), sleeper.args)
    records.forget(sleeper.pid)
    assert ChildRecords(tmp_path).reap() == [] and pid_alive(sleeper.pid)


def test_one_server_holds_a_runtime_directory(tmp_path: Path) -> None:
    first = ChildRecords.claim(tmp_path)
    with pytest.raises(RuntimeDirBusy) as busy:
        ChildRecords.claim(tmp_path)
    assert str(busy.value).startswith(f"{tmp_path} is held by ")
    assert f"(pid {first.owner.pid})" in str(busy.value) and f"[cwd {Path.cwd()}]" in str(busy.value)
    first.release()
    ChildRecords.claim(tmp_path).release()
