"""One upstream child process: spawn, readiness, logs, stop.

The child runs from an argv list (never a shell) in its own process group.
On Linux a watchdog process kills its group when the swapper dies, even by
SIGKILL (:mod:`swapper.watchdog`; no ``preexec_fn``, so Python spawns with vfork);
everywhere, a pid record lets the next start reap children a crashed swapper
left behind (:mod:`swapper.reaper`). Stopping ends
every descendant, also one that left the group with ``setsid``: descendants are
collected (psutil) before the group is signalled, and signalled one by one.

Output is read in blocks, never by line, so a line of any length is truncated
in the log (:meth:`LogSink.feed`) and the child never meets a closed pipe. From
:data:`LOG_SETTLED` seconds after the child became ready, its output is read at
most every :data:`LOG_BATCH` seconds (unless a read fills a whole block):
llama-server logs each of its nine lines per request apart, and reading each as it
came cost a wake-up, a read and a write. What it prints while loading and just
after is read at once.

Readiness is noticed within milliseconds: every line the child logs (such as
llama-server's "listening" line) triggers a poll of the check endpoint, and
between lines the endpoint is polled at a short interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Protocol

import psutil

from .config import PORT_MACRO, ModelSpec
from .identity import Identity
from .logring import LogSink
from .upstream import UpstreamPool
from .watchdog import WATCHDOG

POLL_INTERVAL = 0.02
LOG_BATCH = 0.05  # seconds between reads of a serving child's output
LOG_SETTLED = 1.0  # seconds after readiness from which its output is read in batches
_READ_BLOCK = 1 << 16
_PIPE_BYTES = 1 << 20  # room for the child's output between two reads (Linux; best effort)
_SETPIPE_SZ: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)


class LoadError(Exception):
    """The model could not be made ready; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


async def wait_for_exit(popen: subprocess.Popen[bytes]) -> None:
    """Wait for the child without parking a thread on it where the OS allows (pidfd)."""
    if not hasattr(os, "pidfd_open"):
        await asyncio.to_thread(popen.wait)
        return
    loop = asyncio.get_running_loop()
    fd = os.pidfd_open(popen.pid)
    exited = asyncio.Event()
    loop.add_reader(fd, exited.set)
    try:
        await exited.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    popen.wait()


# Linux lists each thread's children in /proc (one small read); psutil scans every process.
_CHILDREN_LISTS = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _child_pids(pid: int) -> list[int]:
    tasks = f"/proc/{pid}/task"
    try:
        return [int(c) for t in os.listdir(tasks)
                for c in Path(f"{tasks}/{t}/children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of ``pid`` (children, grandchildren, setsid'd or not)."""
    if not _CHILDREN_LISTS:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(pid).children(recursive=True)
        return []
    found: list[psutil.Process] = []
    todo = [pid]
    while todo:
        for child in _child_pids(todo.pop()):
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(child))
                todo.append(child)
    return found


def signal_all(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def child_env(extra: Mapping[str, str], private: AbstractSet[str] = frozenset()) -> dict[str, str]:
    """Our environment minus the ``private`` variables, plus the model's own ``env``."""
    return {**{k: v for k, v in os.environ.items() if k not in private}, **extra}


def expand_port(text: str, port: int | None) -> str:
    return text.replace(PORT_MACRO, str(port)) if port is not None else text


class ChildProcess(Protocol):
    """What the manager needs of a model's process (a fake one in unit tests)."""

    spec: ModelSpec
    port: int | None
    base_url: str
    argv: list[str]
    ready_at: float

    @property
    def pid(self) -> int | None: ...

    @property
    def returncode(self) -> int | None: ...

    def spawn(self) -> Identity: ...

    async def wait_ready(self, http: UpstreamPool) -> None: ...

    async def stop(self) -> None: ...


ProcessFactory = Callable[[ModelSpec, "int | None", LogSink, float,
                           Callable[["ChildProcess"], None], frozenset[str]], ChildProcess]
"""Makes a model's process: its spec, port, log, health timeout, exit callback, and the
environment variables it must not inherit (:attr:`~swapper.config.SwapperConfig.private_env`)."""


class UpstreamProcess:
    """A child process serving one model."""

    def __init__(self, spec: ModelSpec, port: int | None, log: LogSink,
                 health_timeout: float, on_exit: Callable[[UpstreamProcess], None],
                 private_env: frozenset[str] = frozenset()) -> None:
        self.spec = spec
        self.private_env = private_env
        self.port = port
        self.log = log
        self.health_timeout = health_timeout
        self.base_url = expand_port(spec.proxy, port).rstrip("/")
        self.argv = [expand_port(a, port) for a in spec.cmd]
        self.ready_at = 0.0
        self._descendants: list[psutil.Process] = []
        self._on_exit = on_exit
        self._popen: subprocess.Popen[bytes] | None = None
        self._exited = asyncio.Event()
        self._activity = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode if self._popen else None

    def spawn(self) -> Identity:
        """Start the child (argv, own process group, dies with its parent); returns its
        pid and create time (what its record names)."""
        env = child_env(self.spec.env, self.private_env)
        self.log.write(f"[swapper] starting {self.spec.id}: {' '.join(self.argv)}")
        try:
            self._popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise LoadError(f"model '{self.spec.id}' could not start: {exc}") from exc
        if WATCHDOG is not None:
            WATCHDOG.watch(self._popen.pid)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._pump_output()), loop.create_task(self._watch_exit())]
        try:  # not waited for yet: at worst a zombie, whose create time still reads
            return Identity.of(self._popen.pid)
        except psutil.Error:
            return Identity(self._popen.pid, 0.0)  # matches no process: never signalled

    async def wait_ready(self, http: UpstreamPool) -> None:
        """Wait until the check endpoint answers 200; stop the child and raise if it cannot."""
        try:
            await asyncio.wait_for(self._poll_ready(http), self.health_timeout)
        except asyncio.TimeoutError:
            await self.stop()
            raise LoadError(self._failure(f"not ready after {self.health_timeout:g} s"), 504) from None
        except LoadError:
            await self.stop()
            raise
        self.ready_at = time.monotonic()
        if self._popen is not None:  # a wrapper's server is known even if the wrapper dies first
            self._descendants = descendants(self._popen.pid)

    def _failure(self, what: str) -> str:
        tail = "\n".join(self.log.tail(20))
        return f"model '{self.spec.id}' {what}; last log lines:\n{tail}"

    async def _poll_ready(self, http: UpstreamPool) -> None:
        check = self.spec.check_endpoint
        url = None if check in ("", "none") else self.base_url + "/" + check.lstrip("/")
        while True:
            if self._exited.is_set():
                raise LoadError(self._failure(f"exited with code {self.returncode} while loading"))
            if url is None or await http.status(url, timeout=2.0) == 200:
                return
            self._activity.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._activity.wait(), POLL_INTERVAL)

    async def _pump_output(self) -> None:
        assert self._popen is not None and self._popen.stdout is not None
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        if _SETPIPE_SZ is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._popen.stdout.fileno(), _SETPIPE_SZ, _PIPE_BYTES)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self._popen.stdout)
        try:
            while block := await reader.read(_READ_BLOCK):
                if self.log.feed(block):
                    self._activity.set()
                if (self.ready_at and len(block) < _READ_BLOCK and not self._exited.is_set()
                        and time.monotonic() - self.ready_at > LOG_SETTLED):
                    await self._batch_pause(transport)
            self.log.flush()
        finally:
            transport.close()

    async def _batch_pause(self, transport: asyncio.ReadTransport) -> None:
        """Leave the child's output in the pipe for :data:`LOG_BATCH` seconds (its exit ends
        the pause), so the lines it writes meanwhile cost one read."""
        transport.pause_reading()
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._exited.wait(), LOG_BATCH)
        finally:
            transport.resume_reading()

    async def _watch_exit(self) -> None:
        assert self._popen is not None
        await wait_for_exit(self._popen)
        self._kill_group(signal.SIGKILL)  # reap grandchildren left in the group
        if WATCHDOG is not None:
            WATCHDOG.unwatch(self._popen.pid)
        signal_all(self._descendants, signal.SIGKILL)  # and those that left it
        self._exited.set()
        self._activity.set()
        self.log.write(f"[swapper] {self.spec.id} exited with code {self._popen.returncode}")
        self._on_exit(self)

    def _kill_group(self, sig: int) -> None:
        if self._popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, sig)

    async def stop(self) -> None:
        """cmdStop or SIGTERM to the group and every descendant; SIGKILL after ``unload_timeout``.

        Returns once the child and every descendant collected before signalling are gone.
        """
        if self._popen is None or self._exited.is_set():
            return
        self._descendants = list({p.pid: p for p in self._descendants + descendants(self._popen.pid)}
                                 .values())
        if self.spec.cmd_stop:
            argv = [a.replace("${PID}", str(self._popen.pid)) for a in self.spec.cmd_stop]
            with contextlib.suppress(OSError):  # detached, never waited for: a vfork spawn
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # noqa: ASYNC220
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        else:
            self._kill_group(signal.SIGTERM)
            signal_all(self._descendants, signal.SIGTERM)
        try:
            await asyncio.wait_for(self._exited.wait(), self.spec.unload_timeout)
        except asyncio.TimeoutError:
            self.log.write(f"[swapper] {self.spec.id} ignored SIGTERM; killing")
            self._kill_group(signal.SIGKILL)
            await self._exited.wait()
        await self._end_descendants()
        pump = self._tasks[0] if self._tasks else None
        if pump is not None:  # the child's last lines: the pipe ends with its last writer
            await asyncio.wait({pump}, timeout=0.5)
        for task in self._tasks:
            task.cancel()

    async def _end_descendants(self) -> None:
        """Wait for the collected descendants (SIGKILLed by the exit watch) to be gone."""
        if not self._descendants:
            return
        signal_all(self._descendants, signal.SIGKILL)
        await asyncio.to_thread(psutil.wait_procs, self._descendants, 5.0)

