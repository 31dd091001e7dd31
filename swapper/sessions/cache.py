"""The session cache put together: what the manager and the proxy call.

One :class:`SessionCache` per swapper. Per child:

1. before spawning it, :meth:`SessionCache.plan` computes its cache key (or says why the child
   cannot take part), discards what the same model saved under another key, and gives the
   ``--slot-save-path`` to add to its command line;
2. once it is ready, :meth:`ChildPlan.attach` reads its slots (``/props``);
3. before each request is forwarded, :meth:`ChildSessions.before_request` gives the slot to pin
   the request to (``id_slot``), after restoring the session's saved cache into it on the
   session's first request to this child (lazily: FINDINGS Q5, DESIGN.md);
4. after the first answer following a restore, :meth:`ChildSessions.after_response` judges
   the restore from its ``timings`` and turns the feature off for a key whose restores
   restore nothing;
5. before the child is stopped, :meth:`ChildSessions.save_all` saves the slots that hold a
   session, each bounded in time and all within a budget.

Everything it does is reported through ``emit(kind, **fields)`` (the event bus's
``publish``): ``session_saved``, ``session_restored``, ``session_verified``,
``session_discarded``, ``session_save_failed``, ``session_restore_failed``,
``session_cache_off``. A session appears in events only as the first 12 digits of its hash.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import DEFAULT_SESSION_MIN_TOKENS, SESSION_SAVE_BUDGET
from ..upstream import UpstreamPool
from .keys import CacheKey, Unsupported, cache_key, parse_argv
from .slots import RestoreRejected, SlotClient, SlotError
from .store import SIDECAR_RESERVE, Discarded, NoRoom, SessionStore, StoreError
from .table import SlotTable
from .verify import RestoreHealth, Timings, Verdict, judge

Emit = Callable[..., None]
SEEN_LIMIT = 4096
"""Sessions a child remembers having served (a session restores only on its first request)."""
GUESS_BYTES_PER_TOKEN = 300_000
"""For a save's timeout before its real size is known: a 64-layer model's f16 KV is ~262 KB/token."""


@dataclass(frozen=True)
class CacheSettings:
    """How the session cache behaves (the wiring fills it from models.ini / the YAML)."""

    root: Path
    max_bytes: int
    min_tokens: int = DEFAULT_SESSION_MIN_TOKENS
    """Slots holding fewer tokens are not saved: re-reading them is cheap."""
    io_floor: float = 5.0
    """Seconds a save or restore may always take, ..."""
    io_rate: float = 100e6
    """... plus its bytes at this rate (bytes/s), ..."""
    io_ceiling: float = 120.0
    """... at most this long."""
    save_budget: float = SESSION_SAVE_BUDGET
    """Seconds all the saves of one stop may take together (a swap waits for them)."""
    call_timeout: float = 5.0
    """Seconds for ``/props`` and ``/slots``."""

    def io_timeout(self, size: int) -> float:
        return min(self.io_ceiling, self.io_floor + size / self.io_rate)


def default_max_bytes(total: int, free: int) -> int:
    """The cap when none is configured, from the disk that holds the cache: a tenth of it, at
    most 50 GB (six 30k-token sessions of a 64-layer model at ~262 KB a token), and never more
    than half the space free now. Pure."""
    return int(max(0, min(total // 10, 50 * 10**9, free // 2)))


def disk_of(path: Path) -> tuple[int, int]:
    """(total, free) bytes of the file system that holds ``path`` (or would: its nearest
    existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            usage = shutil.disk_usage(candidate)
            return usage.total, usage.free
    return 0, 0


def _noop(kind: str, **fields: Any) -> None:
    """An ``emit`` that drops events."""


class SessionCache:
    """The store, the health of each key, and the children's plans."""

    def __init__(self, settings: CacheSettings, pool: UpstreamPool, emit: Emit = _noop) -> None:
        self.settings, self.pool, self.emit = settings, pool, emit
        self.store = SessionStore(settings.root, settings.max_bytes)
        self.health = RestoreHealth()
        self.off: dict[str, str] = {}
        """model id -> why the feature is off for it (the last plan's reason)."""

    def _discarded(self, model: str | None, items: Sequence[Discarded]) -> None:
        for item in items:
            self.emit("session_discarded", model=model, session=item.session[:12], tokens=item.tokens,
                      bytes=item.bytes, reason=item.reason)

    def _turn_off(self, model_id: str, reason: str) -> None:
        if self.off.get(model_id) != reason:
            self.off[model_id] = reason
            self.emit("session_cache_off", model=model_id, reason=reason)

    def plan(self, model_id: str, argv: Sequence[str], env: Mapping[str, str],
             bytes_per_token: int | None = None, owner: str = "") -> ChildPlan | None:
        """The plan for a child about to start from ``argv`` (``env``: its whole environment;
        ``owner``: the config it comes from, see :meth:`SessionStore.adopt`), or None (with a
        ``session_cache_off`` event) when it cannot take part. Synchronous file work: stats,
        a mkdir, a small write."""
        try:
            if not self.store.is_open:
                self._discarded(None, self.store.open())
            key = cache_key(parse_argv(argv, env))
            broken = self.health.reason(key.hex)
            if broken is not None:
                raise Unsupported(broken)
            directory, discarded = self.store.adopt(model_id, key, owner)
        except (Unsupported, StoreError) as exc:
            self._turn_off(model_id, str(exc))
            return None
        except OSError as exc:
            self._turn_off(model_id, f"{self.settings.root}: {exc.strerror or exc}")
            return None
        self.off.pop(model_id, None)
        self._discarded(model_id, discarded)
        known = [e.size // e.tokens + 1 for e in self.store.entries() if e.cache_key == key.hex]
        return ChildPlan(self, model_id, key, directory, max(known, default=bytes_per_token or 0))

    def configure(self, max_bytes: int, min_tokens: int) -> None:
        """Take a new cap and threshold (a reload); sessions over a lower cap go at once,
        least recently used first."""
        self.settings = replace(self.settings, max_bytes=max_bytes, min_tokens=min_tokens)
        self._discarded(None, self.store.set_cap(max_bytes))

    def status(self) -> dict[str, Any]:
        """For ``status`` and ``/ui``: bytes and sessions on disk, where it is off and why."""
        entries = self.store.entries()
        models = self.store.models()
        per_model: dict[str, dict[str, int]] = {}
        for entry in entries:
            row = per_model.setdefault(models.get(entry.cache_key, "?"), {"sessions": 0, "bytes": 0})
            row["sessions"] += 1
            row["bytes"] += entry.disk
        return {"root": str(self.settings.root), "max_bytes": self.settings.max_bytes,
                "bytes": self.store.used, "sessions": len(entries), "models": per_model,
                "off": dict(self.off), "broken": self.health.broken()}

    def close(self) -> None:
        self.store.close()


@dataclass
class ChildPlan:
    """A child about to start: add :attr:`extra_argv` to its command line."""

    cache: SessionCache
    model_id: str
    key: CacheKey
    directory: Path
    bytes_per_token: int
    """Learnt from earlier saves under the key (else the hint given to ``plan``; 0: unknown)."""

    @property
    def extra_argv(self) -> tuple[str, ...]:
        return ("--slot-save-path", str(self.directory))

    async def attach(self, base_url: str) -> ChildSessions | None:
        """The child is ready at ``base_url``: read its slots. None (feature off for this run)
        when its ``/props`` cannot be read or it has a projector loaded."""
        client = SlotClient(base_url, self.cache.pool, self.key.kv.api_key)
        try:
            props = await client.props(self.cache.settings.call_timeout)
        except SlotError as exc:
            self.cache._turn_off(self.model_id, f"cannot read the child's /props: {exc}")
            return None
        if props.multimodal:
            self.cache._turn_off(self.model_id, "a multimodal projector is loaded")
            return None
        return ChildSessions(self, client, SlotTable(props.total_slots), props.n_ctx)


@dataclass
class _Restored:
    tokens: int
    slot: int


@dataclass
class ChildSessions:
    """The sessions of one running child (see the module docstring for when to call what)."""

    plan: ChildPlan
    client: SlotClient
    table: SlotTable
    n_ctx: int
    _pending: dict[str, _Restored] = field(default_factory=dict)
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _busy: set[int] = field(default_factory=set)
    """Slots one of our pinned requests is in (:meth:`release` frees them)."""

    @property
    def _cache(self) -> SessionCache:
        return self.plan.cache

    @property
    def off(self) -> bool:
        return self._cache.health.reason(self.plan.key.hex) is not None

    def _emit(self, kind: str, session: str, **fields: Any) -> None:
        self._cache.emit(kind, model=self.plan.model_id, session=session[:12], **fields)

    async def before_request(self, session: str | None) -> int | None:
        """The slot to pin a request of ``session`` to (``id_slot``), or None (do not pin).
        On the session's first request to this child its saved cache is restored into that
        slot first (bounded in time; on any failure the request goes on without it). A slot
        returned is busy until :meth:`release`; while it is, the session's other requests are
        not pinned (they would queue behind it: the server picks them a free slot)."""
        if session is None or self.off:
            return None
        if self.table.slot_of(session) is not None and not self._lock.locked():
            return self._claim(self.table.assign(session, time.time()).slot)
        async with self._lock:  # one restore at a time; a session's next request waits for it
            assignment = self.table.assign(session, time.time())
            if assignment.displaced is not None:
                self._pending.pop(assignment.displaced, None)
            if assignment.slot in self._busy:
                return None  # restored later, into a free slot
            first = session not in self._seen
            self._seen[session] = None
            if len(self._seen) > SEEN_LIMIT:
                self._seen.popitem(last=False)
            if first:
                try:
                    await self._restore(session, assignment.slot)
                except OSError as exc:  # the store's files: the request goes on without them
                    self._emit("session_restore_failed", session, reason=f"{exc.strerror or exc}")
            return self._claim(assignment.slot)

    def _claim(self, slot: int) -> int | None:
        if slot in self._busy:
            return None
        self._busy.add(slot)
        return slot

    def release(self, slot: int) -> None:
        """A request pinned to ``slot`` is over."""
        self._busy.discard(slot)

    async def _restore(self, session: str, slot: int) -> None:
        store, key = self._cache.store, self.plan.key.hex
        entry = store.lookup(key, session)
        if entry is None or entry.tokens > self.n_ctx:
            return
        started = time.monotonic()
        try:
            result = await self.client.restore(slot, f"{session}.bin",
                                               self._cache.settings.io_timeout(entry.size))
        except RestoreRejected as exc:
            self._cache._discarded(self.plan.model_id, [
                d for d in [store.discard(key, session, f"the server refused it: {exc}")] if d])
            return
        except SlotError as exc:
            self._emit("session_restore_failed", session, reason=str(exc))
            return
        store.touch(entry)
        ms = round((time.monotonic() - started) * 1000, 1)
        self._emit("session_restored", session, slot=slot, tokens=result.tokens, bytes=result.bytes,
                   ms=ms, server_ms=result.ms)
        if result.tokens == 0:
            self._broken(f"a restore of {entry.tokens} saved tokens restored 0")
        else:
            self._pending[session] = _Restored(result.tokens, slot)

    def wants_timings(self, session: str | None) -> bool:
        """Whether this answer verifies a restore (the proxy then taps its ``timings``)."""
        return session is not None and session in self._pending

    def after_response(self, session: str | None, timings: Timings | None, forced: bool = True,
                       cache_prompt: bool = True) -> Verdict | None:
        """Judge the restore that preceded this answer (None when there was none). ``forced``:
        the request carried the ``id_slot`` given; ``cache_prompt``: it did not turn prompt
        caching off."""
        restored = self._pending.pop(session, None) if session is not None else None
        if restored is None:
            return None
        verdict = judge(restored.tokens, timings, forced, cache_prompt)
        assert session is not None
        self._emit("session_verified", session, verdict=verdict.value, restored=restored.tokens,
                   cache_n=timings.cache_n if timings else None,
                   prompt_n=timings.prompt_n if timings else None)
        if verdict is Verdict.BROKEN:
            assert timings is not None
            self._broken(f"the first answer after restoring {restored.tokens} tokens into slot "
                         f"{restored.slot} reused none of them (cache_n 0, prompt_n {timings.prompt_n})")
        return verdict

    def _broken(self, detail: str) -> None:
        binary = self.plan.key.record.get("binary", ["?"])[0]
        reason = f"restores restore nothing with {binary} ({detail})"
        if self._cache.health.mark_broken(self.plan.key.hex, reason):
            self._cache._turn_off(self.plan.model_id, reason)
        self._pending.clear()

    async def save_all(self, budget: float | None = None) -> int:
        """Save every slot that holds a session of at least ``min_tokens`` tokens (most
        recently used first, each bounded in time, all within ``budget`` seconds, by default
        ``save_budget``); returns how many were saved. Never raises: a failure is an event
        and the stop goes on."""
        settings = self._cache.settings
        if self.off or not len(self.table):
            return 0
        deadline = time.monotonic() + (settings.save_budget if budget is None else budget)
        try:
            states = {s.id: s for s in await self.client.slots(settings.call_timeout)}
        except SlotError as exc:
            self._cache.emit("session_save_failed", model=self.plan.model_id, reason=str(exc))
            return 0
        saved = 0
        for session, slot, used in self.table.holders():
            tokens = states[slot].tokens if slot in states else None
            if tokens is None or tokens < max(settings.min_tokens, 1):
                continue  # nothing new since the start (restored, unused), or too short to matter
            left = deadline - time.monotonic()
            if left <= 0:
                self._emit("session_save_failed", session, reason="the stop's save budget is spent")
                break
            saved += await self._save(session, slot, tokens, used, left)
        return saved

    async def _save(self, session: str, slot: int, tokens: int, used: float, left: float) -> int:
        store, settings = self._cache.store, self._cache.settings
        per_token = self.plan.bytes_per_token
        expected = tokens * per_token + SIDECAR_RESERVE if per_token else 0
        try:
            pending = store.begin_save(self.plan.key.hex, session, expected, used)
        except (NoRoom, OSError) as exc:
            self._emit("session_save_failed", session, reason=str(exc))
            return 0
        self._cache._discarded(self.plan.model_id, pending.discarded)
        started = time.monotonic()
        timeout = min(left, settings.io_timeout(tokens * (per_token or GUESS_BYTES_PER_TOKEN)))
        try:
            result = await self.client.save(slot, pending.filename, timeout)
        except SlotError as exc:
            store.abort(pending)
            self._emit("session_save_failed", session, reason=str(exc))
            return 0
        except BaseException:
            store.abort(pending)
            raise
        if result.tokens == 0:  # an empty slot is never kept
            store.abort(pending)
            return 0
        try:
            entry, evicted = store.commit(pending, result.tokens, last_used=used)
        except (NoRoom, ValueError, OSError) as exc:
            self._emit("session_save_failed", session, reason=str(exc))
            return 0
        self._cache._discarded(self.plan.model_id, evicted)
        self.plan.bytes_per_token = max(self.plan.bytes_per_token, entry.size // entry.tokens + 1)
        self._emit("session_saved", session, slot=slot, tokens=entry.tokens, bytes=entry.disk,
                   ms=round((time.monotonic() - started) * 1000, 1), server_ms=result.ms)
        return 1

