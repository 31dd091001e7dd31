"""Carries out the scheduler's effects: owns the process handles, TTL and preload.

Every request goes through :meth:`Manager.lease`; the common case (model
ready) is decided synchronously with no task or future created. What runs is
the scheduler's state alone (:attr:`Scheduler.status`); ``processes`` only maps
a model to its handle (pid, port) and never answers "is it running?".

Processes come from a factory (``process_factory``) and time from ``clock``, so
tests drive the manager in process with fake children and a fake clock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

from . import scheduler as sch
from .config import SESSION_SHUTDOWN_BUDGET, ModelSpec, SwapperConfig
from .errors import ApiError, shown, unavailable
from .events import SHUTTING_DOWN, EventBus, Listeners
from .logring import LineListener, LogSink, log_file
from .process import ChildProcess, LoadError, ProcessFactory, UpstreamProcess
from .reaper import ChildRecords
from .selectors import NameRouter
from .sessions.cache import CacheSettings, ChildPlan, ChildSessions, SessionCache, default_max_bytes, disk_of
from .solver import Plan, Solution, compile_plan
from .upstream import UpstreamPool

log = logging.getLogger("swapper")


@dataclass(frozen=True)
class Lease:
    """Permission to send one request to a ready model."""

    model: str
    spec: ModelSpec
    base_url: str
    params: Mapping[str, Any] = field(default_factory=dict)  # from setParamsByID


class _Held:
    """One request's hold on a model: ``async with manager.lease(name) as lease``.

    A plain class, not ``asynccontextmanager``: it is entered on every request.
    """

    __slots__ = ("_granted", "_manager", "_name", "_req", "_routed", "_waiting")

    def __init__(self, manager: Manager, name: str,
                 waiting: Callable[[], Awaitable[None]] | None) -> None:
        self._manager, self._name, self._waiting = manager, name, waiting
        self._granted = False

    async def __aenter__(self) -> Lease:
        manager = self._manager
        self._routed = routed = manager.names.route(self._name, manager.scheduler.status)
        self._req = next(manager._ids)
        try:
            await manager._acquire(self._req, routed.model, self._waiting)
            self._granted = True
            lease = manager._lease_for(routed.model)
        except BaseException:
            self.__exit()
            raise
        return dc_replace(lease, params=routed.params) if routed.params else lease

    async def __aexit__(self, *exc: object) -> None:
        self.__exit()

    def __exit(self) -> None:
        manager, routed = self._manager, self._routed
        try:
            if self._granted:
                self._granted = False
                manager._release(self._req, routed.model)
        finally:
            manager.names.release(routed)


def free_port() -> int:
    """A port nobody listens on right now (bind to port 0, read it back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _limits(config: SwapperConfig) -> dict[str, sch.ModelLimits]:
    return {m: sch.ModelLimits(s.concurrency_limit, s.has_process, config.priority.get(m, 0))
            for m, s in config.models.items()}


class Manager:
    """Runs the models of one :class:`SwapperConfig`.

    With a ``runtime_dir`` it claims that directory for this process at once (its
    children's records live there): :class:`~swapper.reaper.RuntimeDirBusy` when
    another server holds it.
    """

    def __init__(self, config: SwapperConfig, bus: EventBus | None = None,
                 runtime_dir: Path | None = None,
                 process_factory: ProcessFactory = UpstreamProcess,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus or EventBus()
        self.config = config
        self.plan: Plan = compile_plan(config)
        self.names = NameRouter(config)
        self.scheduler = sch.Scheduler(_limits(config), self._evictions, config.max_queue_wait)
        self.processes: dict[str, ChildProcess] = {}
        self._new_process = process_factory
        self._clock = clock
        self._swaps: dict[str, asyncio.Task[None]] = {}  # the phase of each swap in flight
        self._swap_started: dict[str, float] = {}
        self.logs: dict[str, LogSink] = {}
        self.log_listeners = Listeners[LineListener]()
        """Called with every child's new log lines (whichever sink, now or later)."""
        self.last_used: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._futures: dict[int, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stops: dict[str, asyncio.Task[None]] = {}
        self._records = ChildRecords.claim(runtime_dir) if runtime_dir else None
        self.http = UpstreamPool()  # shared with the proxy, so a stop can drop idle connections
        self._ttl_task: asyncio.Task[None] | None = None
        self.closing = False
        """Set by :meth:`begin_shutdown`."""
        self._runtime_dir = runtime_dir
        self.session_cache: SessionCache | None = None
        """Saved sessions (:mod:`swapper.sessions`), made when a model first needs it."""
        self.sessions: dict[str, ChildSessions] = {}
        """The sessions of each running child that has them (the proxy pins requests there)."""

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Reap children a crashed predecessor left, start TTL checks, preload."""
        if self._records is not None:
            for pid in self._records.reap():
                self.bus.publish("orphan_reaped", pid=pid)
        self._ttl_task = asyncio.create_task(self._ttl_loop())
        for model in self.config.preload:
            self._spawn(self._preload(model))

    async def _preload(self, model: str) -> None:
        try:
            async with self.lease(model):
                self.bus.publish("preloaded", model=model)
        except ApiError as exc:
            self.bus.publish("preload_failed", model=model, error=exc.message)

    def begin_shutdown(self) -> None:
        """The server stops taking requests: publish ``shutting_down`` (the ``/api/events``
        feed ends on it) and end every log follower's stream, so that no long-lived
        stream keeps the server from exiting. Requests in flight carry on."""
        if self.closing:
            return
        self.closing = True
        self.bus.publish(SHUTTING_DOWN)
        for sink in self.logs.values():
            sink.live.close()

    async def shutdown(self) -> None:
        """Save the children's sessions (within ``SESSION_SHUTDOWN_BUDGET``), stop every child
        and release resources."""
        if self._ttl_task is not None:
            self._ttl_task.cancel()
        self._apply(self.scheduler.shutdown())
        saving, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(s.save_all(SESSION_SHUTDOWN_BUDGET) for s in saving))
        await asyncio.gather(*(p.stop() for p in list(self.processes.values())),
                             return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        self.http.close()
        if self.session_cache is not None:
            self.session_cache.close()
        self.release()
        for sink in self.logs.values():
            sink.close()

    def release(self) -> None:
        """Give up the runtime directory (after shutdown, or when the server never starts)."""
        if self._records is not None:
            self._records.release()

    # -- requests -------------------------------------------------------------

    def lease(self, name: str,
              waiting: Callable[[], Awaitable[None]] | None = None) -> _Held:
        """Hold a model for the duration of one request (``async with``; yields a Lease).

        ``waiting`` is awaited once when the request cannot be served at once (it waits
        for a load, a swap or a drain); a 404/429 or a ready model never calls it.
        """
        return _Held(self, name, waiting)

    async def _acquire(self, req: int, model: str,
                       waiting: Callable[[], Awaitable[None]] | None) -> None:
        """Wait until request ``req`` may use ``model`` (at once in the common case)."""
        if self._apply(self.scheduler.request(req, model, self._clock()), req):
            return
        fut = asyncio.get_running_loop().create_future()
        self._futures[req] = fut
        if waiting is not None:
            try:
                await waiting()
            except BaseException:
                self._futures.pop(req, None)
                self._apply(self.scheduler.cancel(req))
                raise
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.config.load_wait_timeout)
        except (asyncio.CancelledError, asyncio.TimeoutError) as exc:
            self._futures.pop(req, None)
            self._apply(self.scheduler.cancel(req))
            if isinstance(exc, asyncio.TimeoutError):
                raise unavailable(f"model '{model}' is still loading; retry shortly",
                                  retry_after=5, code="model_loading") from None
            raise

    def _release(self, req: int, model: str) -> None:
        self.last_used[model] = self._clock()
        self._apply(self.scheduler.finished(req))

    def _lease_for(self, model: str) -> Lease:
        process = self.processes.get(model)
        if process is not None:
            return Lease(model, process.spec, process.base_url)
        spec = self.config.models[model]
        return Lease(model, spec, spec.proxy.rstrip("/"))

    def _apply(self, effects: Iterable[sch.Effect], current: int | None = None) -> bool:
        """Carry out effects; True when ``current`` was granted synchronously."""
        granted = False
        for effect in effects:
            if isinstance(effect, sch.Grant):
                if effect.req == current:
                    granted = True
                else:
                    self._resolve(effect.req, None)
            elif isinstance(effect, sch.Reject):
                raise ApiError(effect.status, effect.message,
                               headers={"retry-after": "1"} if effect.status == 429 else {})
            elif isinstance(effect, sch.Fail):
                headers = {"retry-after": "1"} if effect.status == 503 else {}
                self._resolve(effect.req, ApiError(effect.status, effect.message, headers=headers))
            elif isinstance(effect, sch.StartSwap):
                self._swap_phase(effect.model, self._evict(effect))
            elif isinstance(effect, sch.Load):
                self._swap_phase(effect.model, self._load(effect.model))
            elif isinstance(effect, sch.Stop):
                self._stops[effect.model] = self._spawn(self._stop(effect.model, effect.reason))
        return granted

    def _resolve(self, req: int, error: ApiError | None) -> None:
        fut = self._futures.pop(req, None)
        if fut is None or fut.done():
            return
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)

    def _swap_phase(self, model: str, coro: Any) -> None:
        task = self._spawn(coro)
        self._swaps[model] = task

        def forget(done: asyncio.Task[Any]) -> None:
            if self._swaps.get(model) is done:
                del self._swaps[model]
        task.add_done_callback(forget)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _evictions(self, target: str, running: frozenset[str]) -> Solution:
        known = frozenset(m for m in running if m in self.config.models)
        return self.plan.solve(target, known)

    # -- effects --------------------------------------------------------------

    async def _evict(self, swap: sch.StartSwap) -> None:
        """Phase one of a swap: stop what it evicts, then let the scheduler decide the load."""
        self._swap_started[swap.model] = self._clock()
        self.bus.publish("swap_started", model=swap.model, evict=sorted(swap.evict),
                         set=swap.set_name, cost=swap.cost)
        reason = f"evicted for {swap.model}"
        await asyncio.gather(*(self._stop_process(m, reason) for m in swap.evict),
                             return_exceptions=True)
        self._apply(self.scheduler.evicted(swap.model))

    async def _load(self, model: str) -> None:
        """Phase two: start ``model`` and report whether it became ready."""
        error: LoadError | None = None
        try:
            await self._start_process(model)
        except LoadError as exc:
            error = exc
        except Exception as exc:  # a bug must fail the waiters, never strand them
            self.processes.pop(model, None)
            error = LoadError(f"model '{model}' failed to start: {exc!r}")
        ms = round((self._clock() - self._swap_started.pop(model, self._clock())) * 1000, 1)
        if error is None:
            process = self.processes.get(model)
            self.bus.publish("model_ready", model=model, ms=ms,
                             pid=process.pid if process else None)
            self._apply(self.scheduler.swap_done(model))
        else:
            self.bus.publish("load_failed", model=model, ms=ms, error=str(error).splitlines()[0])
            self._apply(self.scheduler.swap_done(model, str(error), error.status))

    async def _stop(self, model: str, reason: str) -> None:
        """Stop ``model``'s process, let a swap in flight for it end, report it stopped."""
        await self._stop_process(model, reason)
        while (swap := self._swaps.get(model)) is not None and not swap.done():
            await asyncio.wait({swap})
        self._stops.pop(model, None)
        self._apply(self.scheduler.stopped(model))

    async def _stop_process(self, model: str, reason: str) -> None:
        process = self.processes.get(model)
        if process is None:
            return
        self.bus.publish("model_stopping", model=model, pid=process.pid, reason=reason)
        sessions = self.sessions.pop(model, None)
        if sessions is not None:  # the one wait a swap gains: each save bounded, all budgeted
            await sessions.save_all()
        self.http.discard(process.base_url)
        await process.stop()
        if self.processes.get(model) is process:
            del self.processes[model]
        self.bus.publish("model_stopped", model=model, reason=reason)

    async def _start_process(self, model: str) -> None:
        spec = self.config.models[model]
        plan = self._session_plan(spec)
        if plan is not None:
            spec = dc_replace(spec, cmd=(*spec.cmd, *plan.extra_argv))
        port = self._port_for(model) if spec.needs_port else None
        process = self._new_process(spec, port, self.log_for(model),
                                    self.config.health_check_timeout, self._exited,
                                    self.config.private_env)
        self.processes[model] = process
        self.bus.publish("model_starting", model=model, port=port)
        try:
            child = process.spawn()
            if self._records is not None:
                self._records.remember(child, process.argv)
            await process.wait_ready(self.http)
        except LoadError:
            self.processes.pop(model, None)
            raise
        if plan is not None:
            await self._attach_sessions(model, plan, process.base_url)

    def _session_plan(self, spec: ModelSpec) -> ChildPlan | None:
        """The session cache's plan for a child of ``spec`` about to start (None: it takes
        no part; why is a ``session_cache_off`` event)."""
        if not spec.session_cache:
            return None
        cache = self.session_cache
        if cache is None:
            settings = self._cache_settings()
            if settings is None:
                self.bus.publish("session_cache_off", model=spec.id,
                                 reason="no directory for saved sessions (no runtime directory)")
                return None
            cache = self.session_cache = SessionCache(settings, self.http, self.bus.publish)
        try:
            return cache.plan(spec.id, spec.cmd, {**os.environ, **spec.env},
                              spec.kv_bytes_per_token, self.config.session_cache.owner)
        except Exception as exc:  # a bug here must never keep the model from starting
            self._sessions_failed(spec.id, exc)
            return None

    async def _attach_sessions(self, model: str, plan: ChildPlan, base_url: str) -> None:
        try:
            sessions = await plan.attach(base_url)
        except Exception as exc:  # the model serves without saved sessions
            self._sessions_failed(model, exc)
            return
        if sessions is not None:
            self.sessions[model] = sessions

    def _sessions_failed(self, model: str, exc: Exception) -> None:
        log.exception("session cache of %s failed", model)
        self.bus.publish("session_cache_off", model=model, reason=f"internal error: {exc!r}")

    def _cache_settings(self) -> CacheSettings | None:
        """The session cache's settings from the config (its root: the configured directory,
        else ``sessions`` in the runtime directory; its cap: the configured one, else from
        the disk)."""
        wanted = self.config.session_cache
        if wanted.dir:
            root = Path(wanted.dir)
        elif self._runtime_dir is not None:
            root = self._runtime_dir / "sessions"
        else:
            return None
        return CacheSettings(root, wanted.max_bytes or default_max_bytes(*disk_of(root)),
                             min_tokens=wanted.min_tokens)

    def _port_for(self, model: str) -> int:
        if self.config.start_port is None:
            return free_port()
        return self.config.start_port + list(self.config.models).index(model)

    def port_of(self, model: str) -> int | None:
        """The port ``model``'s process listens on, if it has one now."""
        process = self.processes.get(model)
        if process is not None:
            return process.port
        return None if self.config.start_port is None else self._port_for(model)

    def log_for(self, model: str) -> LogSink:
        if model not in self.logs:
            path = log_file(Path(self.config.log_dir), model) if self.config.log_dir else None
            self.logs[model] = LogSink(model, path, listeners=self.log_listeners)
            if self.closing:
                self.logs[model].live.close()
        return self.logs[model]

    def _exited(self, process: ChildProcess) -> None:
        """A child exited; unexpected only when the scheduler has it READY.

        Exits while starting or stopping are reported by the load or the stop. Any exit
        ends the child's record: its process group is gone, nothing is left to reap.
        """
        if self._records is not None and process.pid is not None:
            self._records.forget(process.pid)
        model = process.spec.id
        if (self.processes.get(model) is not process
                or self.scheduler.status.get(model) is not sch.Status.READY):
            return
        self.processes.pop(model, None)
        self.sessions.pop(model, None)  # a crash: its slots are gone, nothing to save
        self.bus.publish("model_exited", model=model, pid=process.pid, code=process.returncode)
        self._apply(self.scheduler.stopped(model))

    def reconfigure(self, config: SwapperConfig) -> list[str]:
        """Adopt a new config; only models whose spec changed (or vanished) stop.

        A changed model that was running starts again (after its in-flight
        requests finish) with the new settings; unchanged ones are untouched.

        Raises ConfigError (keeping the old config) when the new one is invalid.
        """
        plan = compile_plan(config)
        changed = {m for m, spec in self.config.models.items() if config.models.get(m) != spec}
        restart = changed & self.scheduler.running() & set(config.models)
        self.config, self.plan = config, plan
        if self.session_cache is not None and (settings := self._cache_settings()) is not None:
            self.session_cache.configure(settings.max_bytes, settings.min_tokens)
        self.names.config = config
        if self.names.active_profile not in config.profiles:
            self.names.active_profile = None
        self.scheduler.max_queue_wait = config.max_queue_wait
        self._apply(self.scheduler.reconfigure(_limits(config), self._evictions, changed))
        for model in sorted(restart):  # it was up: bring it back with its new settings
            self._spawn(self._preload(model))
        self.bus.publish("reconfigured", changed=sorted(changed))
        return sorted(changed)

    # -- TTL, unload, status ----------------------------------------------------

    async def _ttl_loop(self) -> None:
        while True:
            ttls = [s.ttl for s in self.config.models.values() if s.ttl > 0]
            await asyncio.sleep(min([1.0, *(t / 4 for t in ttls)]))
            self.expire_idle()

    def expire_idle(self) -> None:
        """Offer the scheduler a TTL stop of every model idle past its TTL (it may refuse)."""
        now = self._clock()
        for model, process in list(self.processes.items()):
            spec = self.config.models.get(model)
            ttl = spec.ttl if spec is not None else 0.0
            idle_since = max(self.last_used.get(model, 0.0), process.ready_at)
            if ttl > 0 and process.ready_at and now - idle_since >= ttl:
                effects = self.scheduler.idle_timeout(model)
                if effects:
                    self.bus.publish("ttl_expired", model=model, ttl=ttl)
                self._apply(effects)

    def load(self, name: str) -> str:
        """Start loading ``name`` in the background, as a request would; returns its id."""
        model = self.config.resolve(name)
        if model is None:
            raise ApiError(404, f"model '{shown(name)}' not found")
        self._spawn(self._preload(model))
        return model

    async def unload(self, model: str | None = None) -> list[str]:
        """Stop one model (or all); returns the models it ended, once they are STOPPED.

        A model already stopping (TTL, or evicted by a swap) is waited for too, so
        when this returns, ``/running`` lists none of them.
        """
        if model is not None:
            resolved = self.config.resolve(model)
            if resolved is None:
                raise ApiError(404, f"model '{shown(model)}' not found")
            model = resolved
        targets = {m for m, state in self.scheduler.status.items()
                   if state is not sch.Status.STOPPED and model in (None, m)}
        self._apply(self.scheduler.unload(model))
        waits = {self._stops[m] for m in targets if m in self._stops}
        waits |= {self._swaps[t] for t, evict in self.scheduler.swaps.items()
                  if evict & targets and t in self._swaps}
        if waits:
            await asyncio.wait(waits)  # never cancels them, even if the caller goes away
        return sorted(targets)

    def session_status(self) -> dict[str, Any] | None:
        """The session cache as ``status`` and ``/ui`` show it (None: no model uses it):
        bytes and sessions on disk against the cap, per model, where it is off and why, and
        ``held``: the sessions each running child holds in its slots now."""
        if self.session_cache is None:
            return None
        return {**self.session_cache.status(),
                "held": {model: len(s.table) for model, s in self.sessions.items()}}

    def running(self) -> list[dict[str, Any]]:
        """What runs now, as /running reports it: the scheduler's state, with process details."""
        rows = []
        for model, state in self.scheduler.status.items():
            if state is sch.Status.STOPPED:
                continue
            process = self.processes.get(model)
            spec = process.spec if process is not None else self.config.models.get(model)
            rows.append({
                "model": model,
                "state": state.value,
                "pid": process.pid if process else None,
                "port": process.port if process else None,
                "proxy": process.base_url if process else None,
                "in_flight": self.scheduler.in_flight[model],
                "ttl": spec.ttl if spec else 0.0,
                "memory_mb": spec.memory_mb if spec else 0.0,
                "cmd": process.argv if process else None,
            })
        return rows
