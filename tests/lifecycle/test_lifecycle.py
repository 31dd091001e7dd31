"""``llmstack start/status/stop/restart/logs/reload`` through the real CLI on the demo stack."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from llmstack.project.daemon import STOP_GRACE
from tests.conftest import free_port, http, pid_alive, wait_until
from tests.lifecycle.conftest import Cli

LOOKALIKE = "import time; time.sleep(120)"


def _diagnose(project: Path) -> str:
    """The pid record and what the kernel says about its pid, for failure messages."""
    path = project / ".llmstack" / "daemon.json"
    if not path.exists():
        return "no pid record"
    record = json.loads(path.read_text())
    try:
        proc = psutil.Process(record["pid"])
        return f"record {record}; live: {proc.create_time()} {proc.cmdline()} {proc.status()}"
    except psutil.Error as exc:
        return f"record {record}; {exc!r}"


def _record(project: Path) -> dict:
    return json.loads((project / ".llmstack" / "daemon.json").read_text())


@pytest.mark.real
def test_start_status_noop_stop_leaves_none_of_ours_and_spares_a_lookalike(
        cli: Cli, project: Path, spawn: Callable[..., subprocess.Popen[bytes]],
        llama_server_bin: str) -> None:
    port = free_port()
    decoy = spawn([sys.executable, "-c", LOOKALIKE, "-m", "llmstack", "serve", "--demo",
                   "--port", str(port), "--log-dir", str(project / ".llmstack" / "logs")])
    started = cli("start", "--detach", "--port", str(port))
    assert started.returncode == 0, started.stderr
    assert "running: pid" in started.stderr and f"127.0.0.1:{port}" in started.stderr
    record = _record(project)
    pid = record["pid"]
    assert record["cmdline"][-5:] == ["--port", str(port), "--log-dir",
                                      str(project / ".llmstack" / "logs"), "--demo"]
    assert (project / ".llmstack" / "active-channel").read_text() == "current\n"

    status = cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "llmstack: running" in status.stdout and f"http://127.0.0.1:{port}/v1" in status.stdout
    for tier in ("fast", "agent", "plan"):
        assert tier in status.stdout

    again = cli("start", "--detach", "--port", str(port))
    assert again.returncode == 0 and "[=] already running" in again.stderr
    assert _record(project)["pid"] == pid

    code, _, _ = http("POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                      {"model": "plan", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 2})
    assert code == 200
    doc = json.loads(cli("status", "--json").stdout)
    assert doc["state"] == "running" and doc["pid"] == pid and doc["channel"] == "current"
    tiers = {t["name"]: t for t in doc["tiers"]}
    plan = tiers["plan"]
    assert plan["state"] == "ready" and plan["port"] and plan["rss_mb"] > 0
    children = [t["pid"] for t in doc["tiers"] if t["pid"]]
    assert len(children) >= 2  # fast (preloaded) and plan

    logs = cli("logs", "plan", "-n", "5")
    assert logs.returncode == 0 and "task 0" in logs.stdout  # llama-server served the request
    assert "swapper" in cli("logs").stdout  # the stack's own log: its events

    stopped = cli("stop")
    assert stopped.returncode == 0 and "[OK] stopped" in stopped.stdout, stopped.stdout
    for ours in (pid, *children):
        assert not pid_alive(ours), f"pid {ours} survived stop"
    assert decoy.poll() is None, "stop killed a process that only looks like ours"
    assert not (project / ".llmstack" / "daemon.json").exists()
    assert not (project / ".llmstack" / "active-channel").exists()
    after = cli("status")
    assert after.returncode == 3 and "stopped" in after.stdout
    assert "[=] not running" in cli("stop").stdout


@pytest.mark.real
def test_restart_reload_and_following_a_tier_log(cli: Cli, project: Path,
                                                 cli_env: dict[str, str],
                                                 llama_server_bin: str) -> None:
    port = free_port()
    assert cli("start", "--detach", "--port", str(port)).returncode == 0
    first = _record(project)["pid"]
    fast_log = project / ".llmstack" / "logs" / "fast.log"
    before = len(fast_log.read_text().splitlines())  # fast may still be loading: the log grows
    follow = subprocess.Popen([sys.executable, "-m", "llmstack", "logs", "fast", "-f", "-n", "1"],
                              cwd=project, env=cli_env, stdout=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        shown = follow.stdout.readline().rstrip("\n")
        # -n 1: the last line when the follower started, so none written before that one
        assert shown in fast_log.read_text().splitlines()[max(before - 1, 0):], _diagnose(project)
        code, _, _ = http("POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                          {"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
        assert code == 200
        assert follow.stdout.readline().strip()  # then live: the request's lines
    finally:
        follow.kill()
        follow.wait()
    stack_log = subprocess.Popen([sys.executable, "-m", "llmstack", "logs", "-f", "-n", "0"],
                                 cwd=project, env=cli_env, stdout=subprocess.PIPE, text=True)
    try:
        reloaded = cli("reload", "--shell", "bash")
        assert reloaded.returncode == 0, reloaded.stderr
        assert "[OK] the stack re-read models.ini" in reloaded.stderr
        assert "_llmstack_hook force" in reloaded.stdout  # the shell half, for eval
        assert stack_log.stdout is not None
        assert '"kind": "reconfigured"' in stack_log.stdout.readline()  # followed as written
    finally:
        stack_log.kill()
        stack_log.wait()

    restarted = cli("restart", "--detach", "--port", str(port))
    assert restarted.returncode == 0, restarted.stderr
    second = _record(project)["pid"]
    assert second != first and not pid_alive(first) and pid_alive(second)
    assert http("GET", f"http://127.0.0.1:{port}/health")[0] == 200
    assert cli("stop").returncode == 0 and not pid_alive(second)


@pytest.mark.real
def test_foreground_start_is_recorded_and_stopped_by_stop(cli: Cli, project: Path,
                                                          cli_env: dict[str, str],
                                                          llama_server_bin: str) -> None:
    port = free_port()
    fg = subprocess.Popen([sys.executable, "-m", "llmstack", "start", "--port", str(port)],
                          cwd=project, env=cli_env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: http("GET", f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200
                   if _listening(port) else False, 60, "the foreground stack to answer")
        assert _record(project)["pid"] == fg.pid
        assert cli("status").returncode == 0
        assert cli("stop").returncode == 0
        assert fg.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        assert not (project / ".llmstack" / "daemon.json").exists()
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait()


def _ignores_sigterm(pid: int) -> bool:
    """SIGTERM is in the process's ignored-signals mask (/proc/<pid>/status SigIgn)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _listening(port: int) -> bool:
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
               for c in psutil.net_connections(kind="inet"))


def test_a_record_whose_pid_now_belongs_to_another_process_is_stale(
        cli: Cli, project: Path, spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    other = spawn([sys.executable, "-c", LOOKALIKE, "-m", "llmstack", "serve", "--demo"])
    proc = psutil.Process(other.pid)
    wait_until(lambda: "llmstack" in proc.cmdline(), 10, "the look-alike to exec")
    # Same pid and command line as recorded, but a different create time: a reused pid.
    record = {"pid": other.pid, "create_time": proc.create_time() - 3600, "cmdline": proc.cmdline(),
              "host": "127.0.0.1", "port": free_port(), "log_dir": "", "demo": True,
              "channel": "current", "started_at": time.time() - 3600}
    path = project / ".llmstack" / "daemon.json"
    path.write_text(json.dumps(record))

    status = cli("status")
    assert status.returncode == 3 and "stale pid record" in status.stdout
    assert path.exists()  # status only reports
    stopped = cli("stop")
    assert stopped.returncode == 0
    assert "stale pid record" in stopped.stdout
    assert "now belongs to another process" in stopped.stdout
    assert other.poll() is None, "stop signalled a process it did not start"
    assert not path.exists()


def test_a_port_held_by_another_program_is_refused_and_named(
        cli: Cli, project: Path, spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    port = free_port()
    holder = spawn([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
    wait_until(lambda: _listening(port), 10, "the other program to listen")
    refused = cli("start", "--detach", "--port", str(port))
    assert refused.returncode == 1
    assert f"port {port} is held by another program" in refused.stderr
    assert f"pid {holder.pid}" in refused.stderr and "http.server" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert holder.poll() is None
    assert not (project / ".llmstack" / "daemon.json").exists()


def test_a_stack_that_dies_while_starting_fails_with_its_log_tail(cli: Cli, project: Path) -> None:
    failed = cli("start", "--detach", "--port", str(free_port()),
                 env={"LLMSTACK_CACHE_DIR": str(project / "empty-cache"),
                      "PATH": str(Path(sys.executable).parent)})  # no llama-server anywhere
    assert failed.returncode == 1
    assert "exited with status 1" in failed.stderr and "llama-server not found" in failed.stderr
    assert not (project / ".llmstack" / "daemon.json").exists()
    assert not (project / ".llmstack" / "active-channel").exists()


def test_the_stack_log_rotates(tmp_path: Path) -> None:
    """serve --log-dir logs through a RotatingFileHandler: 5 MB files, 3 backups."""
    path = tmp_path / "llmstack.log"
    subprocess.run([sys.executable, "-c",
                    "import logging, sys; from pathlib import Path; "
                    "from swapper.server import configure_logging; "
                    "configure_logging('info', Path(sys.argv[1])); "
                    "[logging.getLogger('t').info('x' * 200) for _ in range(100_000)]", str(path)],
                   check=True, timeout=60)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["llmstack.log", "llmstack.log.1", "llmstack.log.2", "llmstack.log.3"]
    assert all((tmp_path / f).stat().st_size <= 5 * 1024 * 1024 for f in files)


def test_a_client_of_an_external_stack_has_nothing_local_to_start_or_stop(
        cli: Cli, project: Path) -> None:
    (project / ".llmstack" / "default-channel").write_text("external http://127.0.0.1:9\n")
    refused = cli("start", "--detach")
    assert refused.returncode == 1 and "client of http://127.0.0.1:9" in refused.stderr
    assert not (project / ".llmstack" / "daemon.json").exists()
    stopped = cli("stop")
    assert stopped.returncode == 0 and "nothing local to stop" in stopped.stdout
    status = cli("status")
    assert status.returncode == 1 and "http://127.0.0.1:9 does not answer" in status.stdout


def test_stop_kills_what_ignores_sigterm_after_the_grace_period(
        cli: Cli, project: Path, spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    stubborn = spawn([sys.executable, "-c", "import signal, time; "
                      "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
    proc = psutil.Process(stubborn.pid)
    wait_until(lambda: "SIG_IGN" in " ".join(proc.cmdline()), 10, "the stubborn process to exec")
    record = {"pid": proc.pid, "create_time": proc.create_time(), "cmdline": proc.cmdline(),
              "host": "127.0.0.1", "port": free_port(), "log_dir": "", "demo": True,
              "channel": "current", "started_at": time.time()}
    (project / ".llmstack" / "daemon.json").write_text(json.dumps(record))
    wait_until(lambda: _ignores_sigterm(proc.pid), 10, "it to ignore SIGTERM")
    started = time.monotonic()
    stopped = cli("stop")
    assert stopped.returncode == 0 and "SIGKILL" in stopped.stdout, stopped.stdout
    assert stubborn.wait(5) == -signal.SIGKILL
    assert time.monotonic() - started >= STOP_GRACE  # TERM first, KILL only after the grace
