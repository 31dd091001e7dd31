"""A project's stack as a background service: start, stop, restart and logs.

``start --detach`` runs ``llmstack serve`` in its own session with its logs in
``.llmstack/logs/`` (``llmstack.log`` and ``<tier>.log``, rotated at 5 MB by the
serve process itself; ``serve.stderr`` holds only what the process prints outside
logging: the banner and a crash's traceback, and is truncated at each start), writes
the pid record (:mod:`llmstack.project.pidrecord`) and returns once ``/health`` answers and
``/running`` names the process it started as the server (not another one that took
the port first).
``stop`` signals only the process its record names, after checking pid, create time
and command line, so a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import psutil

from swapper.config import DEFAULT_UNLOAD_TIMEOUT, SESSION_SHUTDOWN_BUDGET, SHUTDOWN_GRACE
from swapper.small_files import RECORD_LIMIT, UnreadableFile, open_lock, read_small

from ..config.address import url_for
from ..config.ini import read_stack
from ..config.schema import STACK_LOG_NAME
from ..errors import UserError
from ..settings import Settings
from .channels import CURRENT, Channel, pinned, require_local
from .files import ensure_state_dir
from .paths import Project
from .pidrecord import (
    PidRecord,
    StaleRecord,
    live_record,
    port_holder,
    record_for,
    record_path,
    remove_record,
    write_record,
)

if TYPE_CHECKING:
    import httpx

READY_TIMEOUT = 180.0
STOP_GRACE = SHUTDOWN_GRACE + SESSION_SHUTDOWN_BUDGET + DEFAULT_UNLOAD_TIMEOUT + 5.0
"""How long ``stop`` waits after SIGTERM before SIGKILL: a serve lets requests in flight end
(SHUTDOWN_GRACE), saves its models' sessions (at most SESSION_SHUTDOWN_BUDGET), then stops its
models (each within DEFAULT_UNLOAD_TIMEOUT, all at once); it exits as soon as it is done."""
KILL_WAIT = 5.0
"""How long a stopped stack's children, or anything SIGKILLed, get to be gone."""
POLL = 0.05
STDERR_LOG = "serve.stderr"
STACK_LOG = f"{STACK_LOG_NAME}.log"
TAIL_LINES = 30


@dataclass(frozen=True)
class Target:
    """What ``start`` serves: an address and a models.ini (None: the demo stack)."""

    host: str
    port: int
    models_ini: Path | None

    @property
    def url(self) -> str:
        return url_for(self.host, self.port)


def log_dir(root: Path) -> Path:
    return Project(root).state / "logs"


def _clear_active_channel(root: Path) -> None:
    """``serve`` removes its marker on a clean exit; a stop by signal or a failed start may not."""
    Project(root).active_channel.unlink(missing_ok=True)


def resolve_target(project: Project, settings: Settings, host: str | None, port: int | None,
                   demo: bool, models_ini: Path | None = None) -> Target:
    """The address and models.ini ``start`` uses: flags, else models.ini's [DEFAULT];
    ``models_ini``: a file the user named instead of the project's (it must exist)."""
    ini = project.models_ini_to_serve(models_ini, demo)
    if ini is None:
        from ..config.demo import demo_stack
        stack = demo_stack()
    else:
        stack = read_stack(ini, settings.variables)
    return Target(host or stack.host, port or stack.router_port,
                  None if ini is None else ini.resolve())


def running(root: Path, report: IO[str] | None = None) -> tuple[PidRecord, psutil.Process] | None:
    """The verified running stack of ``root``; a stale record is reported (one line) and
    removed. A pid record that is not a regular file is a :class:`UserError`."""
    try:
        return live_record(root)
    except StaleRecord as stale:
        if report is not None:
            print(f"[!] stale pid record {record_path(root)}: {stale}; removed", file=report)
        remove_record(root, stale.pid)
        return None


@contextlib.contextmanager
def _start_lock(root: Path) -> Iterator[None]:
    """One ``start``/``stop`` at a time per project."""
    path = Project(root).state / "daemon.lock"
    ensure_state_dir(path.parent)
    try:
        fd = open_lock(path)
    except UnreadableFile as exc:
        raise UserError(f"{exc}; remove it") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _preflight(root: Path, target: Target, asked: frozenset[str],
               out: IO[str]) -> PidRecord | None:
    """The running stack's record (start is then a no-op), else None once the port is free.
    A :class:`UserError` when the running stack differs from ``target`` in what the user
    ``asked`` for (``host``, ``port``, ``file``): a flag is never ignored silently."""
    found = running(root, report=out)
    if found is not None:
        record = found[0]
        differs = _differences(record, target, asked)
        if differs:
            raise UserError(f"already running (pid {record.pid}) {differs}: `llmstack restart` "
                            "with these options moves it")
        return record
    holder = port_holder(target.host, target.port)
    if holder is not None:
        raise UserError(f"port {target.port} is held by another program: {holder}; stop it, or "
                       f"start on another port (llmstack start --port N)")
    return None


def asked_for(host: str | None, port: int | None, demo: bool,
              models_ini: Path | None) -> frozenset[str]:
    """What a ``start`` names explicitly: ``host``, ``port``, ``file`` (models.ini or demo)."""
    named = {"host": host is not None, "port": port is not None,
             "file": demo or models_ini is not None}
    return frozenset(k for k, v in named.items() if v)


def _differences(record: PidRecord, target: Target, asked: frozenset[str]) -> str:
    """How the running stack (``record``) differs from ``target`` in what was ``asked``, in
    words ("" if it does not); a record that does not name its models.ini (written before
    it could) is compared by address only."""
    parts = []
    moved = {"host": record.host != target.host, "port": record.port != target.port}
    if any(moved[k] for k in ("host", "port") if k in asked):
        parts.append(f"at {record.url}, not {target.url}")
    if "file" in asked and (record.demo or record.models_ini):
        served = _served(None if record.demo else record.models_ini)
        wanted = _served(target.models_ini)
        if served != wanted:
            parts.append(f"serving {served}, not {wanted}")
    return " and ".join(parts)


def _served(models_ini: str | Path | None) -> str:
    return "the demo stack" if models_ini is None else str(models_ini)


def _local_channel(root: Path, verb: str) -> Channel:
    """The pinned local channel (refused for a client of an external stack)."""
    project = Project(root)
    require_local(project, verb)
    return pinned(project) or CURRENT


def serve_argv(target: Target, logs: Path, channel: Channel) -> list[str]:
    """The background ``llmstack serve`` command line (same interpreter)."""
    argv = [sys.executable, "-m", "llmstack", "serve", "--host", target.host,
            "--port", str(target.port), "--log-dir", str(logs)]
    argv += ["--models-ini", str(target.models_ini)] if target.models_ini else ["--demo"]
    if channel.name == "next" and target.models_ini:  # serve pins only its default models.ini
        argv += ["--channel", "next"]
    return argv


def start_detached(project: Project, settings: Settings, *, host: str | None = None,
                   port: int | None = None, demo: bool = False, models_ini: Path | None = None,
                   timeout: float = READY_TIMEOUT, out: IO[str] = sys.stderr) -> int:
    """Run the project's stack in the background; returns 0 once ``/health`` answers.

    A no-op when this project's stack already runs as asked. The pid is in the pid record
    (:func:`llmstack.project.pidrecord.read_record`). Raises :class:`UserError` when the
    project is a client of an external stack, its stack runs on another address or
    models.ini, the port is held by another program, the stack exits or does not answer
    within ``timeout`` (with its log tail), or another server answers on its port.
    """
    root = project.root.resolve()
    channel = _local_channel(root, "start")
    target = resolve_target(project, settings, host, port, demo, models_ini)
    with _start_lock(root):
        existing = _preflight(root, target, asked_for(host, port, demo, models_ini), out)
        if existing is not None:
            print(f"[=] already running: pid {existing.pid} at {existing.url}", file=out)
            return 0
        if target.models_ini is None:  # the demo's model: fetched here, with its progress shown
            from ..models.demo import demo_model
            demo_model(settings.cache_dir, lambda line: print(line, file=out, flush=True))
        logs = log_dir(root)
        logs.mkdir(parents=True, exist_ok=True)
        argv = serve_argv(target, logs, channel)
        with (logs / STDERR_LOG).open("wb") as stderr:
            child = subprocess.Popen(argv, cwd=root, stdin=subprocess.DEVNULL, stdout=stderr,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            record = record_for(child.pid, argv, **_record_fields(target, channel),
                                log_dir=str(logs))
        except psutil.NoSuchProcess:
            record = None
        if record is not None:
            write_record(root, record)
        try:
            _wait_ready(child, target, timeout, out, logs, settings.auth_headers)
        except BaseException:  # failed, or Ctrl-C while waiting: leave nothing behind
            _terminate(child.pid)
            child.poll()
            remove_record(root, child.pid)
            _clear_active_channel(root)
            raise
    print(f"[OK] llmstack running: pid {child.pid} at {target.url} (logs: {logs})", file=out)
    return 0


def _record_fields(target: Target, channel: Channel) -> dict[str, Any]:
    """What a pid record says about the stack serving ``target``."""
    return {"host": target.host, "port": target.port, "demo": target.models_ini is None,
            "models_ini": str(target.models_ini or ""), "channel": channel.name,
            "started_at": time.time()}


def _wait_ready(child: subprocess.Popen[bytes], target: Target, timeout: float, out: IO[str],
                logs: Path, headers: dict[str, str]) -> None:
    """Poll ``/health`` until it answers 200 and ``/running`` names ``child`` as the
    server, showing progress; raise with the log tail, or naming the server that
    answers instead (another one, which took the port first). ``headers``: what each
    request carries (the stack's API key)."""
    import httpx

    url = target.url
    started = time.monotonic()
    tty = out.isatty()
    print(f"[*] starting llmstack (pid {child.pid}) on {url} ...", file=out,
          end="" if tty else "\n", flush=True)
    shown = 0
    with httpx.Client(timeout=1.0, trust_env=False, headers=headers) as client:
        while True:
            if child.poll() is not None:
                raise UserError(f"llmstack serve exited with status {child.returncode} before "
                               f"answering{_exit_reason(logs)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url + "/health").status_code == 200:
                    break
            waited = time.monotonic() - started
            if waited > timeout:
                raise UserError(f"llmstack serve did not answer on {url} within {timeout:.0f} s:\n"
                               f"{log_tail(logs)}")
            if tty and int(waited) > shown:
                shown = int(waited)
                print(f"\r[*] starting llmstack (pid {child.pid}) on {url} ... {shown} s",
                      file=out, end="", flush=True)
            time.sleep(POLL)
        if _server_pid(client, url) != child.pid:
            holder = port_holder(target.host, target.port) or "a program this user cannot see"
            raise UserError(f"{url} is answered by another server, not the llmstack serve "
                           f"started here (pid {child.pid}): {holder}")
    if tty:
        print(file=out)


def _server_pid(client: httpx.Client, url: str) -> int | None:
    """The pid the server at ``url`` reports as its own (``GET /running``), if it does."""
    import httpx

    try:
        doc = client.get(url + "/running").json()
    except (httpx.HTTPError, ValueError):
        return None
    pid = doc.get("pid") if isinstance(doc, dict) else None
    return pid if type(pid) is int else None


def _exit_reason(logs: Path) -> str:
    """Why serve exited: its one-line refusal when that is all it printed (another
    stack holds the port, ...), else the tail of its logs."""
    with contextlib.suppress(OSError):
        printed = read_small(logs / STDERR_LOG, RECORD_LIMIT).decode(errors="replace").strip()
        if printed.startswith("[!] ") and "\n" not in printed:
            return ": " + printed.removeprefix("[!] ")
    return ":\n" + log_tail(logs)


def log_tail(logs: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of the stack's own log and of what it printed, for error messages."""
    parts = []
    for name in (STACK_LOG, STDERR_LOG):
        with contextlib.suppress(OSError):
            text = (logs / name).read_text(errors="replace").splitlines()[-lines:]
            if text:
                parts.append(f"--- {logs / name} ---\n" + "\n".join(text))
    return "\n".join(parts) or f"(no log output in {logs})"


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of ``procs`` still alive after ``timeout`` (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(POLL)
        alive = [p for p in alive if not _gone(p)]
    return alive


def _terminate(pid: int) -> None:
    """TERM a child we just started, KILL it after the grace period."""
    with contextlib.suppress(psutil.NoSuchProcess):
        _stop_process(psutil.Process(pid), sys.stderr)


def _stop_process(proc: psutil.Process, out: IO[str]) -> bool:
    """TERM ``proc``; after STOP_GRACE s KILL it and what it started. True if it needed KILL.

    ``psutil.Process`` objects check the create time before signalling, so a child
    that exited and whose pid was reused is never signalled.
    """
    try:
        children = proc.children(recursive=True)
        proc.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        return False
    if _wait_gone([proc], STOP_GRACE):
        print(f"[!] pid {proc.pid} still running {STOP_GRACE:.0f} s after SIGTERM: SIGKILL",
              file=out)
        _kill([proc, *children], out)
        return True
    leftover = _wait_gone(children, KILL_WAIT)  # serve stops its children as it exits
    _kill(leftover, out)
    return bool(leftover)


def _kill(procs: list[psutil.Process], out: IO[str]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    left = _wait_gone(procs, KILL_WAIT)
    if left:
        print(f"[!] still running after SIGKILL: {', '.join(str(p.pid) for p in left)}", file=out)


def project_url(project: Project, settings: Settings) -> str | None:
    """Where the project's stack answers when it runs: its models.ini's address, or the
    demo's (None when models.ini cannot be read: nothing to look at)."""
    try:
        return resolve_target(project, settings, None, None, demo=False).url
    except UserError:
        return None


def unrecorded_server(project: Project, settings: Settings) -> tuple[str, int] | None:
    """The address and pid of a server answering at the project's address although this
    project recorded none (a foreground ``llmstack serve``), if one does."""
    import httpx

    url = project_url(project, settings)
    if url is None:
        return None
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        pid = _server_pid(client, url)
    return (url, pid) if pid is not None else None


def stop(project_dir: Path, out: IO[str] = sys.stdout, settings: Settings | None = None) -> int:
    """Stop what this project started (nothing else); returns the exit status. With
    ``settings``, a server this project did not start that answers at its address is named
    (and left running)."""
    root = project_dir.resolve()
    channel = pinned(Project(root)) or CURRENT
    with _start_lock(root):
        found = running(root, report=out)
        if found is None:
            _clear_active_channel(root)
            other = (unrecorded_server(Project(root), settings)
                     if settings is not None and not channel.external else None)
            if channel.external:
                print(f"[=] client of the external stack at {channel.url}: nothing local to stop",
                      file=out)
            elif other is not None:
                print(f"[=] not started by `llmstack start` here: the server at {other[0]} (pid "
                      f"{other[1]}, a foreground `llmstack serve`?) is left running; Ctrl-C "
                      "where it runs stops it", file=out)
            else:
                print("[=] not running", file=out)
            return 0
        record, proc = found
        print(f"[*] stopping llmstack (pid {record.pid}) at {record.url} ...", file=out, flush=True)
        _stop_process(proc, out)
        remove_record(root, record.pid)
        _clear_active_channel(root)
    print("[OK] stopped", file=out)
    return 0


def start_foreground(project: Project, settings: Settings, *, host: str | None,
                     port: int | None, demo: bool, models_ini: Path | None = None,
                     log_level: str = "info") -> int:
    """Serve in this process (Ctrl-C stops), recorded so ``status``/``stop`` see it."""
    from .serve import ServeOptions, serve

    root = project.root.resolve()
    channel = _local_channel(root, "start")
    target = resolve_target(project, settings, host, port, demo, models_ini)
    with _start_lock(root):
        existing = _preflight(root, target, asked_for(host, port, demo, models_ini), sys.stderr)
        if existing is not None:
            print(f"[=] already running in the background: pid {existing.pid} at "
                  f"{existing.url} (llmstack stop first to run it here)", file=sys.stderr)
            return 0
        write_record(root, record_for(os.getpid(), **_record_fields(target, channel),
                                      log_dir=""))
    try:
        return serve(ServeOptions(host=target.host, port=target.port, models_ini=target.models_ini,
                                  demo=target.models_ini is None, log_level=log_level,
                                  channel=channel.name if target.models_ini else None),
                     project, settings)
    finally:
        remove_record(root, os.getpid())


def logs(project_dir: Path, tier: str | None, follow: bool, lines: int,
         headers: dict[str, str], out: IO[str] = sys.stdout) -> int:
    """Print the stack's log (or one tier's), then follow it with ``follow``; ``headers``:
    what a request to the running stack carries (its API key)."""
    from swapper.logring import log_file  # with the bus and asyncio: not on status's path

    root = project_dir.resolve()
    found = running(root)
    record = found[0] if found else None
    directory = Path(record.log_dir) if record and record.log_dir else log_dir(root)
    if tier is not None and follow:
        if found is None:
            raise UserError("the stack is not running: llmstack logs -f TIER follows a running "
                           f"stack (its last log: llmstack logs {tier})")
        tier_log = log_file(directory, tier)
        return _stream_tier(found[0].url, tier, out, tier_log if tier_log.exists() else None,
                            lines, headers)
    path = log_file(directory, tier) if tier else directory / STACK_LOG
    if not path.exists():
        known = sorted(p.stem for p in directory.glob("*.log") if p.name != STACK_LOG)
        what = f"tier '{tier}'" if tier else "the stack"
        raise UserError(f"no log for {what} in {directory}"
                       + (f" (tier logs: {', '.join(known)})" if known else
                          " (llmstack start --detach writes logs there)"))
    with path.open(errors="replace") as handle:
        history = handle.readlines()  # read to the end either way: -f goes on from there
        out.writelines(history[-lines:] if lines > 0 else [])
        out.flush()
        if follow:
            _follow_file(path, handle, out)
    return 0


def _follow_file(path: Path, handle: IO[str], out: IO[str]) -> None:
    """``tail -F``: print lines as they are appended, reopening after a rotation."""
    inode = os.fstat(handle.fileno()).st_ino
    while True:
        line = handle.readline()
        if line:
            out.write(line)
            out.flush()
            continue
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino != inode or os.stat(path).st_size < handle.tell():
                handle.close()
                handle = path.open(errors="replace")
                inode = os.fstat(handle.fileno()).st_ino
                continue
        time.sleep(0.2)


def _stream_tier(url: str, tier: str, out: IO[str], tier_log: Path | None, lines: int,
                 headers: dict[str, str]) -> int:
    """Follow one tier's log live from the stack's ``/logs/stream/{tier}``.

    History: the last ``lines`` of ``tier_log`` when there is one (read once the
    stream is subscribed, so nothing falls between), else the stack's buffered lines.
    """
    import httpx

    query = "?no-history" if tier_log is not None else ""
    try:
        with httpx.stream("GET", f"{url}/logs/stream/{tier}{query}", headers=headers,
                          timeout=httpx.Timeout(5.0, read=None), trust_env=False) as response:
            if response.status_code != 200:
                response.read()
                raise UserError(f"{url}: {_error_message(response.text)}")
            if tier_log is not None and lines > 0:
                history = tier_log.read_text(errors="replace").splitlines(keepends=True)
                out.writelines(history[-lines:])
                out.flush()
            for line in response.iter_lines():
                print(line, file=out, flush=True)
    except httpx.HTTPError as exc:
        raise UserError(f"lost the log stream from {url}: {exc}") from None
    print("[=] the stack closed the log stream", file=sys.stderr)
    return 0


def _error_message(body: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body itself."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(body)["error"]["message"])
    return body.strip()[:200]


def reload_stack(project_dir: Path, headers: dict[str, str], out: IO[str] = sys.stderr) -> int:
    """Ask the running stack to re-read models.ini (``POST /reload``); reports on ``out``."""
    import httpx

    found = running(project_dir.resolve())
    if found is None:
        print("[=] the stack is not running: nothing to reload", file=out)
        return 0
    url = found[0].url
    try:
        response = httpx.post(f"{url}/reload", headers=headers, timeout=120.0,
                              trust_env=False)
    except httpx.HTTPError as exc:
        raise UserError(f"{url} did not answer POST /reload: {exc}") from None
    if response.status_code != 200:
        raise UserError(_error_message(response.text))
    restarted = response.json().get("restarted") or []
    print(f"[OK] the stack re-read models.ini; restarted: {', '.join(restarted) or 'nothing'}",
          file=out)
    return 0
