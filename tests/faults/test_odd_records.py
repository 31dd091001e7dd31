"""Garbage pid records and odd files where records and models.ini belong.

A ``.llmstack/daemon.json`` that is a regular file but not a record (wrong types, a
pid that is no process id, not JSON, too large) is stale: ``status`` says so in one
line, ``stop`` removes it, ``start --detach`` replaces it. A record, marker or
models.ini that is not a regular file (``/dev/zero``, a FIFO, a symlink to one) is
one ``[!]`` line and a non-zero exit within 2 s: never a hang, never a read that
grows without bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from swapper.small_files import CONFIG_LIMIT, RECORD_LIMIT
from tests.conftest import free_port, pid_alive
from tests.front_door_support import FAST_INI, fake_stack_env
from tests.lifecycle.conftest import Cli, cli, cli_env, project, spawn  # noqa: F401 (fixtures)

QUICK = 2.0  # seconds a refusal may take, the interpreter's start included
HUNG = 6.0  # a command still running then has hung (and is killed)


def valid(live: int, **changes: object) -> dict[str, object]:
    """A well-formed record naming ``live`` (a running process that is not a stack: a
    check of the record gets as far as its create time), with ``changes``."""
    return {"pid": live, "create_time": 1.0, "cmdline": ["llmstack", "serve"],
            "host": "127.0.0.1", "port": 9, "log_dir": "", "demo": True, "channel": "current",
            "started_at": 1.0, **changes}


def text(**changes: object) -> Callable[[int], str]:
    return lambda live: json.dumps(valid(live, **changes))


GARBAGE: dict[str, Callable[[int], str]] = {
    "pid -1": text(pid=-1),
    "pid 0": text(pid=0),
    "pid as a string": text(pid="12"),
    "pid as a float": text(pid=12.5),
    "a huge pid": text(pid=2**70),
    "a huge port": text(port=10**30),
    "create time as a string": text(create_time="yesterday"),
    "create time infinite": lambda live: text()(live).replace('"create_time": 1.0',
                                                              '"create_time": 1e999'),
    "cmdline not a list": text(cmdline="llmstack serve"),
    "a list instead of an object": lambda live: json.dumps([valid(live)]),
    "JSON nested deeply": lambda live: "[" * 50_000 + "]" * 50_000,
    "not JSON": lambda live: "pid=12\n",
    "a huge file": lambda live: text()(live) + " " * (RECORD_LIMIT + 1),
}


@pytest.fixture
def live(spawn: Callable[..., subprocess.Popen[bytes]]) -> int:
    """The pid of a running process that is not a stack (killed after the test)."""
    return spawn([sys.executable, "-c", "import time; time.sleep(120)"]).pid


def timed(cli: Cli, *args: str, env: dict[str, str] | None = None
          ) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    try:
        done = cli(*args, timeout=HUNG, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"llmstack {' '.join(args)} hung (killed after {HUNG} s)")
    return done, time.monotonic() - started


def one_problem_line(text: str, needle: str) -> str:
    lines = [line for line in text.splitlines() if needle in line]
    assert len(lines) == 1, text
    assert "Traceback" not in text, text
    return lines[0]


@pytest.fixture
def record(project: Path) -> Path:
    return project / ".llmstack" / "daemon.json"


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_a_garbage_record_is_stale_for_status_and_stop(
        cli: Cli, record: Path, live: int, garbage: Callable[[int], str]) -> None:
    record.write_text(garbage(live))
    status, took = timed(cli, "status")
    assert status.returncode == 3 and took < QUICK, (status, took)
    one_problem_line(status.stdout + status.stderr, "stale pid record")
    assert record.exists()  # status only reports

    stopped, took = timed(cli, "stop")
    assert stopped.returncode == 0 and took < QUICK, (stopped, took)
    line = one_problem_line(stopped.stdout + stopped.stderr, "stale pid record")
    assert line.startswith(f"[!] stale pid record {record}: ") and line.endswith("; removed")
    assert not record.exists() and pid_alive(live)


def test_start_over_a_garbage_record_starts(cli: Cli, project: Path, record: Path,
                                            tmp_path: Path, live: int) -> None:
    _, env = fake_stack_env(tmp_path / "fake")
    (project / ".llmstack" / "models.ini").write_text(FAST_INI)
    port = str(free_port())
    for garbage in ("pid -1", "a huge file", "create time as a string"):
        record.write_text(GARBAGE[garbage](live))
        started = cli("start", "--detach", "--port", port, env=env)
        assert started.returncode == 0, started.stderr
        one_problem_line(started.stderr, "stale pid record")
        assert "[OK] llmstack running" in started.stderr
        pid = json.loads(record.read_text())["pid"]
        assert pid_alive(pid)
        assert cli("stop", env=env).returncode == 0 and not pid_alive(pid)


def odd_file(path: Path, kind: str, tmp_path: Path) -> None:
    """Make ``path`` a ``kind`` of thing that is not a regular file."""
    if kind == "/dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a symlink to a FIFO":
        os.mkfifo(tmp_path / "elsewhere.fifo")
        path.symlink_to(tmp_path / "elsewhere.fifo")
    else:
        path.mkdir()


ODD = ["/dev/zero", "a FIFO", "a symlink to a FIFO", "a directory"]


@pytest.mark.parametrize("kind", ODD)
def test_a_record_that_is_not_a_regular_file_is_one_line_and_left_alone(
        cli: Cli, record: Path, tmp_path: Path, kind: str) -> None:
    odd_file(record, kind, tmp_path)
    for verb in (["status"], ["stop"], ["start", "--detach", "--port", str(free_port())]):
        done, took = timed(cli, *verb)
        assert done.returncode != 0 and took < QUICK, (verb, done, took)
        line = one_problem_line(done.stderr, "not a regular file")
        assert line.startswith(f"[!] {record}: not a regular file (")
        assert "starting llmstack" not in done.stderr
    assert record.is_symlink() or record.exists()  # nothing removed


@pytest.mark.parametrize("marker", ["active-channel", "default-channel"])
def test_a_channel_marker_that_is_a_fifo_is_one_line(cli: Cli, project: Path,
                                                     marker: str) -> None:
    os.mkfifo(project / ".llmstack" / marker)
    done, took = timed(cli, "status")
    assert done.returncode == 1 and took < QUICK, (done, took)
    one_problem_line(done.stderr, f"{marker}: not a regular file (a FIFO)")


@pytest.mark.parametrize("kind", [*ODD, "too large"])
def test_a_models_ini_that_is_not_a_small_regular_file_is_one_line(
        cli: Cli, project: Path, tmp_path: Path, kind: str) -> None:
    ini = project / ".llmstack" / "models.ini"
    if kind == "too large":
        ini.write_text(FAST_INI + ";" * CONFIG_LIMIT + "\n")
        expected = f"{ini}: larger than 1 MiB"
    else:
        odd_file(ini, kind, tmp_path)
        expected = f"{ini}: not a regular file ("
    served, took = timed(cli, "serve", "--models-ini", str(ini), "--port", str(free_port()))
    assert served.returncode == 2 and took < QUICK, (served, took)
    assert one_problem_line(served.stderr, expected).startswith(f"[!] {expected}")
    started, took = timed(cli, "start", "--detach", "--port", str(free_port()))
    assert started.returncode == 2 and took < QUICK, (started, took)
    assert one_problem_line(started.stderr, expected).startswith(f"[!] {expected}")
    assert not (project / ".llmstack" / "daemon.json").exists()


def test_a_swapper_config_that_is_a_fifo_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    os.mkfifo(config)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "swapper", "-c", str(config), "--listen",
                           f"127.0.0.1:{free_port()}", "--runtime-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=HUNG)
    assert done.returncode == 2 and time.monotonic() - started < QUICK
    assert done.stderr.strip() == f"error: {config}: not a regular file (a FIFO)"
