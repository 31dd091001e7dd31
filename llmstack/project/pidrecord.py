"""The pid record of a project's running stack (``.llmstack/daemon.json``), and who holds a port.

It holds the serve process's pid, its create time and command line (so a pid the
kernel has since given to another process is recognised as stale, never
signalled), the URL it serves and where it logs. Written atomically; read as a
regular file of at most :data:`~swapper.small_files.RECORD_LIMIT` bytes. A regular
file that is not a record (not JSON, a field of the wrong type, a pid that is no
process id, too large) is stale like one whose process is gone: reported, and
replaced by the next ``start``. Anything else there (a FIFO, a device, a
directory) is a one-line :class:`~llmstack.project.paths.UserError`.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
from dataclasses import MISSING, asdict, dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import psutil

from swapper.identity import describe
from swapper.identity import verify as verify_identity
from swapper.small_files import NotRegularFile, UnreadableFile, read_json, write_atomic

from ..config.address import client_host, url_for
from ..errors import UserError
from .paths import Project

RECORD_NAME = "daemon.json"


@dataclass(frozen=True)
class PidRecord:
    pid: int
    create_time: float
    cmdline: list[str]
    host: str
    port: int
    log_dir: str
    demo: bool = False
    channel: str = "current"
    started_at: float = 0.0
    models_ini: str = ""
    """The models.ini it serves (absolute; "" for the demo stack, or a record written before
    this field)."""

    @property
    def url(self) -> str:
        return url_for(self.host, self.port)


def record_path(root: Path) -> Path:
    return Project(root).state / RECORD_NAME


class StaleRecord(Exception):
    """The record names no running stack of ours; ``str()`` says why, in one line."""

    def __init__(self, why: str, pid: int | None = None) -> None:
        super().__init__(why)
        self.pid = pid


_KINDS: dict[str, type] = {"pid": int, "create_time": float, "cmdline": list, "host": str,
                           "port": int, "log_dir": str, "demo": bool, "channel": str,
                           "started_at": float, "models_ini": str}


def _invalid(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``name`` field, or None when it is."""
    kind = _KINDS.get(name)
    if kind is None:
        return f"unknown field {name[:40]!r}"
    if kind is float:
        ok = type(value) in (int, float) and math.isfinite(value) and value >= 0
    elif kind is int:
        ok = type(value) is int and (0 < value < 2**31 if name == "pid" else 0 < value < 65536)
    elif kind is list:
        ok = isinstance(value, list) and all(isinstance(a, str) for a in value)
    else:
        ok = type(value) is kind
    if ok:
        return None
    shown = ("a list" if isinstance(value, list) else "an object" if isinstance(value, dict)
             else json.dumps(value)[:40])
    return f"{name} is {shown}, not a valid {name}"


def parse_record(data: Any) -> PidRecord:
    """A record from its JSON document; :class:`StaleRecord` when it is not one."""
    if not isinstance(data, dict):
        raise StaleRecord(f"not a record (a JSON {type(data).__name__})")
    pid = data.get("pid") if _invalid("pid", data.get("pid")) is None else None
    for name, value in data.items():
        why = _invalid(str(name), value)
        if why is not None:
            raise StaleRecord(why, pid)
    missing = [f.name for f in dataclass_fields(PidRecord) if f.name not in data and f.default is MISSING]
    if missing:
        raise StaleRecord(f"no {missing[0]}", pid)
    return PidRecord(**data)


def read_record(root: Path) -> PidRecord | None:
    """The record, or None when there is none.

    :class:`StaleRecord` when the file is not a valid record; a one-line
    :class:`UserError` when it is not a regular file.
    """
    path = record_path(root)
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except NotRegularFile as exc:
        raise UserError(f"{exc}; the pid record must be a regular file (remove it)") from None
    except UnreadableFile as exc:
        raise StaleRecord(str(exc).removeprefix(f"{path}: ")) from None
    except ValueError as exc:
        raise StaleRecord(f"not JSON ({exc})"[:120]) from None
    return parse_record(data)


def live_record(root: Path) -> tuple[PidRecord, psutil.Process] | None:
    """The running stack the record names, None when there is no record;
    :class:`StaleRecord` when the record is not valid or its process is gone."""
    record = read_record(root)
    if record is None:
        return None
    proc, why = verify(record)
    if proc is None:
        raise StaleRecord(why, record.pid)
    return record, proc


def running_record(root: Path) -> PidRecord | None:
    """The record of this project's running stack, None when none runs (a stale or odd
    record counts as none here: ``start``, ``stop`` and ``status`` report it)."""
    with contextlib.suppress(StaleRecord, UserError):
        found = live_record(root)
        if found is not None:
            return found[0]
    return None


def write_record(root: Path, record: PidRecord) -> None:
    write_atomic(record_path(root), json.dumps(asdict(record), indent=1) + "\n")


def remove_record(root: Path, pid: int | None) -> None:
    """Delete the record if it still names ``pid`` (None: if it is still not valid)."""
    try:
        current = read_record(root)
    except StaleRecord as stale:
        current_pid = stale.pid
    else:
        if current is None:
            return
        current_pid = current.pid
    if current_pid == pid:
        record_path(root).unlink(missing_ok=True)


def record_for(pid: int, argv: list[str] | None = None, **fields: Any) -> PidRecord:
    """A record of the live process ``pid``; ``argv``: what it was just exec'd with.

    A child's command line is read as ``argv`` rather than from the kernel: right after
    ``Popen`` returns, ``/proc/<pid>/cmdline`` can still be empty (the exec is not done
    setting up the new image), while the create time is fixed at fork.
    """
    proc = psutil.Process(pid)
    cmdline = list(argv) if argv is not None else proc.cmdline()
    return PidRecord(pid=pid, create_time=proc.create_time(), cmdline=cmdline, **fields)


def verify(record: PidRecord) -> tuple[psutil.Process | None, str]:
    """The live process the record names, or None and why the record is stale."""
    return verify_identity(record.pid, record.create_time, record.cmdline)


def port_holder(host: str, port: int) -> str | None:
    """Who listens on ``port`` (named when visible), or None when it is free."""
    try:
        listeners = [c for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    except psutil.AccessDenied:
        listeners = []
    for conn in listeners:
        if conn.pid:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(conn.pid)
                return f"{describe(proc)} [cwd {proc.cwd()}]"
            return f"pid {conn.pid}"
    if listeners:
        return "another user's program (its pid is not visible)"
    probe_host = client_host(host)
    with socket.socket(socket.AF_INET6 if ":" in probe_host else socket.AF_INET) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((probe_host, port)) == 0:
            return "a program this user cannot see"
    return None
