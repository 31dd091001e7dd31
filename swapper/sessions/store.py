"""Saved sessions on disk, evicted least recently used under a cap.

Layout (every name llmstack-made hex, every directory 0700 and owned by us)::

    <root>/.lock                          held (flock) while a store is open: one owner
    <root>/<cache key>/key.json           the key's record (:class:`~.keys.CacheKey`) and model id
    <root>/<cache key>/<session>.bin      a slot file, written by llama-server
    <root>/<cache key>/<session>.json     its sidecar: tokens, bytes, saved_at, last_used
    <root>/<cache key>/<session>.<r>.tmp  a save or sidecar in progress (stale ones are removed)

Contracts:

- A save goes to a temporary name the server writes (:meth:`SessionStore.begin_save`) and is
  renamed into place with its sidecar (:meth:`SessionStore.commit`); a crash leaves only a
  ``.tmp``, removed at the next :meth:`SessionStore.open`.
- The bytes of slot files, sidecars and saves in progress never exceed ``max_bytes``: room is
  made before a save for its expected size, least recently used sessions first, and checked
  again with its real size; a session bigger than the cap is not kept. (A save whose expected
  size was too low may overshoot until its commit, by the difference.)
- Sidecars and key records are read bounded (:mod:`swapper.small_files`) and validated; a
  file that is not what we wrote (wrong type, size, names, times) is discarded, never trusted.
  Names that are not ours are left alone; symlinks with our names are removed, never followed.
- A key's sessions are discarded when the same model comes with another key (:meth:`adopt`):
  another window, model file, binary or setting, with the reason.
- Not thread-safe: one event loop (or one thread) calls it. Its file operations are a few
  stats, renames and small writes; the slot files themselves are written by the server.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..small_files import UnreadableFile, read_json, try_lock
from .keys import HEX_LEN, CacheKey, what_changed

SIDECAR_VERSION = 1
SIDECAR_LIMIT = 4096
"""Bytes a sidecar may have when read (ours have about 250)."""
SIDECAR_RESERVE = 1024
"""Bytes a save reserves for its sidecar."""
KEY_RECORD_LIMIT = 64 * 1024
MAX_TOKENS = 1 << 24
LOCK_NAME = ".lock"
KEY_RECORD = "key.json"
_HEX = re.compile(rf"[0-9a-f]{{{HEX_LEN}}}\Z")
_SESSION_FILE = re.compile(rf"([0-9a-f]{{{HEX_LEN}}})\.(?:bin|json)\Z")
_TMP = re.compile(rf"[0-9a-f]{{{HEX_LEN}}}\.[0-9a-f]{{8}}\.tmp\Z")
_MODEL_ID = 256  # characters of a model id kept in a key record
_OWNER = 1024  # ... and of the name of the server's config that owns it


class StoreError(OSError):
    """The store cannot be used (its root is not ours, another process holds it); one line."""


class NoRoom(Exception):
    """A save that cannot be kept under the cap; ``str()`` says why."""


@dataclass(frozen=True)
class Entry:
    """One saved session."""

    cache_key: str
    session: str
    tokens: int
    size: int
    """Bytes of the slot file."""
    saved_at: float
    last_used: float
    meta: int = 0
    """Bytes of the sidecar."""

    @property
    def disk(self) -> int:
        return self.size + self.meta


@dataclass(frozen=True)
class Discarded:
    """A session (or a save) removed from disk, and why: for events and logs."""

    cache_key: str
    session: str
    tokens: int
    bytes: int
    reason: str


@dataclass(frozen=True)
class PendingSave:
    """A save under way: the server writes ``filename`` in ``directory``."""

    cache_key: str
    session: str
    filename: str
    directory: Path
    discarded: tuple[Discarded, ...]
    """What was evicted to make room for it."""


# -- pure parts ---------------------------------------------------------------------------


def plan_eviction(entries: Iterable[Entry], room: int, incoming: int) -> list[Entry] | None:
    """The entries to delete, least recently used first, so that the rest and ``incoming``
    bytes fit in ``room`` bytes; None when deleting all of them would not do. Pure."""
    ordered = sorted(entries, key=lambda e: (e.last_used, e.saved_at, e.cache_key, e.session))
    total = sum(e.disk for e in ordered) + incoming
    victims: list[Entry] = []
    for entry in ordered:
        if total <= room:
            break
        victims.append(entry)
        total -= entry.disk
    return victims if total <= room else None


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a number: {str(value)[:40]!r}")
    return float(value)


def _count(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"not a count in {low}..{high}: {str(value)[:40]!r}")
    return value


def parse_sidecar(data: Any, cache_key: str, session: str, size: int, now: float) -> Entry:
    """The entry a sidecar describes, for slot file ``<cache_key>/<session>.bin`` of ``size``
    bytes; ValueError when it is not one we wrote for that file. A time in the future reads
    as ``now`` (it would never be evicted otherwise). Pure."""
    if not isinstance(data, dict) or data.get("v") != SIDECAR_VERSION:
        raise ValueError("not a sidecar of this version")
    if data.get("cache_key") != cache_key or data.get("session") != session:
        raise ValueError("names another file")
    if _count(data.get("bytes"), 1, 1 << 50) != size:
        raise ValueError(f"says {data.get('bytes')} bytes, the file has {size}")
    last_used = min(max(_number(data.get("last_used")), 0.0), now)
    saved_at = min(max(_number(data.get("saved_at")), 0.0), now)
    return Entry(cache_key, session, _count(data.get("tokens"), 1, MAX_TOKENS), size, saved_at,
                 last_used)


def sidecar_bytes(entry: Entry) -> bytes:
    return json.dumps({"v": SIDECAR_VERSION, "cache_key": entry.cache_key, "session": entry.session,
                       "tokens": entry.tokens, "bytes": entry.size, "saved_at": round(entry.saved_at, 3),
                       "last_used": round(entry.last_used, 3)}).encode()


def parse_key_record(data: Any) -> tuple[str, dict[str, Any], str]:
    """(model id, key record, owner) of a ``key.json``; ValueError when it is not one we
    wrote. Pure."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    model_id, record, owner = data.get("model_id"), data.get("record"), data.get("owner", "")
    if not isinstance(model_id, str) or not 0 < len(model_id) <= _MODEL_ID:
        raise ValueError("no model id")
    if not isinstance(record, dict) or not all(isinstance(k, str) for k in record):
        raise ValueError("no key record")
    if not isinstance(owner, str) or len(owner) > _OWNER:
        raise ValueError("no owner")
    return model_id, record, owner


# -- files --------------------------------------------------------------------------------


def _private_dir(path: Path) -> None:
    """Make ``path`` a directory only we can enter; StoreError when it is not ours."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{path}: not a directory")
    if st.st_uid != os.getuid():
        raise StoreError(f"{path}: owned by another user")
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _regular_size(path: Path) -> int | None:
    """Bytes of ``path`` if it is a regular file (a symlink is none), else None."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _write_atomic(directory: Path, name: str, data: bytes) -> None:
    """Write ``directory/name`` through a temporary file renamed into place."""
    tmp = directory / f"{name.split('.')[0]}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, directory / name)
    except BaseException:
        _unlink(tmp)
        raise


class SessionStore:
    """The saved sessions under ``root``, at most ``max_bytes`` of them (see the module)."""

    def __init__(self, root: Path, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.root, self.max_bytes, self._clock = root, max_bytes, clock
        self._entries: dict[tuple[str, str], Entry] = {}
        self._keys: dict[str, tuple[str, dict[str, Any], str]] = {}  # key -> model, record, owner
        self._reserved: dict[str, int] = {}  # pending filename -> bytes
        self._lock_fd: int | None = None

    # -- lifetime --

    def open(self) -> list[Discarded]:
        """Take the root (created 0700) and read what it holds; returns what was discarded
        (unreadable or hostile files, sessions over the cap). StoreError when the root is not
        ours or another process has it open."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_dir(self.root)
        try:
            fd = try_lock(self.root / LOCK_NAME)
        except UnreadableFile:
            raise
        except OSError:
            fd = None
        if fd is None:
            raise StoreError(f"{self.root}: in use by another server")
        self._lock_fd = fd
        try:
            discarded: list[Discarded] = []
            for name in sorted(os.listdir(self.root)):
                if _HEX.match(name):
                    discarded += self._scan_key(name)
            return discarded + self._fit(0)
        except BaseException:
            self.close()  # half read is not open: the next open starts over
            raise

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        self._entries.clear()
        self._keys.clear()
        self._reserved.clear()

    def set_cap(self, max_bytes: int) -> list[Discarded]:
        """Take a new cap; returns the sessions evicted to fit under it (none while closed:
        :meth:`open` fits them)."""
        self.max_bytes = max_bytes
        if not self.is_open:
            return []
        return self._fit(0, room=max(max_bytes - sum(self._reserved.values()), 0))

    @property
    def is_open(self) -> bool:
        return self._lock_fd is not None

    def _scan_key(self, key: str) -> list[Discarded]:
        directory = self.root / key
        try:
            st = directory.lstat()
        except FileNotFoundError:
            return []
        if stat.S_ISLNK(st.st_mode):
            _unlink(directory)
            return []
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return []  # not ours: left alone
        try:
            self._keys[key] = parse_key_record(read_json(directory / KEY_RECORD, KEY_RECORD_LIMIT))
        except (OSError, ValueError) as exc:
            return self._drop_key(key, f"no readable key record ({_short(exc)})")
        now = self._clock()
        discarded = []
        names = os.listdir(directory)
        for name in names:
            if _TMP.match(name):
                _unlink(directory / name)
        sessions = {m.group(1) for n in names if (m := _SESSION_FILE.match(n))}
        for session in sorted(sessions):
            try:
                entry = self._read_entry(key, session, now)
            except (OSError, ValueError) as exc:
                discarded.append(self._delete(key, session, f"unreadable ({_short(exc)})"))
                continue
            self._entries[key, session] = entry
        return discarded

    def _read_entry(self, key: str, session: str, now: float) -> Entry:
        directory = self.root / key
        size = _regular_size(directory / f"{session}.bin")
        if size is None:
            raise ValueError("no slot file")
        sidecar = directory / f"{session}.json"
        meta = _regular_size(sidecar)
        entry = parse_sidecar(read_json(sidecar, SIDECAR_LIMIT), key, session, size, now)
        return replace(entry, meta=meta or 0)

    # -- keys --

    def adopt(self, model_id: str, key: CacheKey, owner: str = "") -> tuple[Path, list[Discarded]]:
        """The directory of ``key`` (created) for model ``model_id`` of ``owner`` (the config
        it comes from, when servers of several share the root), whose sessions saved under
        any other key are discarded with what changed."""
        model_id, owner = model_id[:_MODEL_ID], owner[:_OWNER]
        discarded: list[Discarded] = []
        for other, (model, record, of) in list(self._keys.items()):
            if (model, of) == (model_id, owner) and other != key.hex:
                discarded += self._drop_key(other, what_changed(record, key.record))
        directory = self.root / key.hex
        _private_dir(directory)
        if self._keys.get(key.hex) != (model_id, dict(key.record), owner):
            _write_atomic(directory, KEY_RECORD, json.dumps(
                {"model_id": model_id, "owner": owner, "record": key.record}).encode())
            self._keys[key.hex] = (model_id, dict(key.record), owner)
        return directory, discarded

    def _drop_key(self, key: str, reason: str) -> list[Discarded]:
        """Delete a key's sessions, its record, and its directory when nothing else is left."""
        directory = self.root / key
        try:
            names = os.listdir(directory)
        except OSError:
            names = []
        sessions = sorted({m.group(1) for n in names if (m := _SESSION_FILE.match(n))})
        discarded = [self._delete(key, session, reason) for session in sessions]
        for name in names:
            if _TMP.match(name) and name not in self._reserved:
                _unlink(directory / name)
        _unlink(directory / KEY_RECORD)
        self._keys.pop(key, None)
        with contextlib.suppress(OSError):
            directory.rmdir()
        return discarded

    def models(self) -> Mapping[str, str]:
        """cache key -> model id of the keys the store holds (for status pages)."""
        return {key: model for key, (model, _, _) in self._keys.items()}

    # -- sessions --

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    @property
    def used(self) -> int:
        """Bytes of the sessions kept and of the saves under way."""
        return sum(e.disk for e in self._entries.values()) + sum(self._reserved.values())

    def lookup(self, cache_key: str, session: str) -> Entry | None:
        """The saved session, if its slot file is still what was saved (else it is discarded)."""
        entry = self._entries.get((cache_key, session))
        if entry is None:
            return None
        if _regular_size(self.root / cache_key / f"{session}.bin") != entry.size:
            self.discard(cache_key, session, "its slot file changed on disk")
            return None
        return entry

    def touch(self, entry: Entry) -> Entry:
        """Mark ``entry`` used now (it moves to the back of the eviction order)."""
        return self._record(replace(entry, last_used=max(self._clock(), entry.last_used)))[0]

    def discard(self, cache_key: str, session: str, reason: str) -> Discarded | None:
        """Delete one saved session."""
        if (cache_key, session) not in self._entries:
            return None
        return self._delete(cache_key, session, reason)

    def _delete(self, key: str, session: str, reason: str) -> Discarded:
        """Delete a session's files (known to the index or not) and say so."""
        entry = self._entries.pop((key, session), None)
        directory = self.root / key
        _unlink(directory / f"{session}.bin")
        _unlink(directory / f"{session}.json")
        return Discarded(key, session, entry.tokens if entry else 0, entry.disk if entry else 0, reason)

    def _record(self, entry: Entry) -> tuple[Entry, list[Discarded]]:
        """Write ``entry``'s sidecar, after making room for it and its slot file (the entry's
        own older record aside): NoRoom when they cannot fit."""
        data = sidecar_bytes(entry)
        own = (entry.cache_key, entry.session)
        discarded = self._fit(entry.size + len(data), exclude=own, used=entry.last_used)
        _write_atomic(self.root / entry.cache_key, f"{entry.session}.json", data)
        entry = replace(entry, meta=len(data))
        self._entries[own] = entry
        return entry, discarded

    def _fit(self, incoming: int, room: int | None = None,
             exclude: tuple[str, str] | None = None, used: float | None = None) -> list[Discarded]:
        """Evict until the kept sessions (all but ``exclude``) and ``incoming`` bytes fit;
        NoRoom when they cannot. ``used``: when the incoming session was last used; only
        sessions used before it are evicted for it (so the least recently used go, whichever
        order they are saved in)."""
        room = self.max_bytes - sum(self._reserved.values()) if room is None else room
        candidates = [e for k, e in self._entries.items() if k != exclude]
        if used is not None:
            room -= sum(e.disk for e in candidates if e.last_used >= used)
            candidates = [e for e in candidates if e.last_used < used]
        victims = plan_eviction(candidates, room, incoming)
        if victims is None:
            beside = " beside the sessions used more recently" if used is not None else ""
            raise NoRoom(f"{_mb(incoming)} does not fit in the cap of {_mb(self.max_bytes)}{beside}")
        reason = f"least recently used, over the cap of {_mb(self.max_bytes)}"
        return [self._delete(v.cache_key, v.session, reason) for v in victims]

    def begin_save(self, cache_key: str, session: str, expected: int,
                   last_used: float | None = None) -> PendingSave:
        """Make room for a save of about ``expected`` bytes (a sidecar included) and name the
        file the server writes; NoRoom when it cannot fit (``last_used``: when the session was
        last used; only sessions used before it make room). The key must be adopted."""
        if cache_key not in self._keys:
            raise NoRoom(f"cache key {cache_key} is not in use")
        discarded = self._fit(expected, used=last_used)
        name = f"{session}.{secrets.token_hex(4)}.tmp"
        self._reserved[name] = expected
        return PendingSave(cache_key, session, name, self.root / cache_key, tuple(discarded))

    def abort(self, pending: PendingSave) -> None:
        """Give a save up: its file goes (also one the server creates later is stale)."""
        self._reserved.pop(pending.filename, None)
        _unlink(pending.directory / pending.filename)

    def commit(self, pending: PendingSave, tokens: int,
               last_used: float | None = None) -> tuple[Entry, list[Discarded]]:
        """Rename a finished save into place with its sidecar (``last_used``: when the session
        was last used, else now); returns it and what was evicted for its real size. NoRoom
        (the save is deleted) when it cannot fit; ValueError when the server did not leave a
        regular file of at least one byte."""
        self._reserved.pop(pending.filename, None)
        path = pending.directory / pending.filename
        try:
            size = _regular_size(path)
            if size is None or size < 1 or not 0 < tokens <= MAX_TOKENS:
                raise ValueError(f"no slot file of {tokens} tokens was written")
            if pending.cache_key not in self._keys:
                raise NoRoom(f"cache key {pending.cache_key} was discarded meanwhile")
            now = self._clock()
            used = now if last_used is None else min(max(last_used, 0.0), now)
            entry, discarded = self._record(Entry(pending.cache_key, pending.session, tokens, size,
                                                  now, used))
        except BaseException:
            _unlink(path)
            raise
        os.replace(path, pending.directory / f"{pending.session}.bin")
        return entry, discarded


def _short(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, (UnreadableFile, ValueError)) else (
        getattr(exc, "strerror", None) or str(exc))
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size < 1e9 else f"{size / 1e9:.2f} GB"

