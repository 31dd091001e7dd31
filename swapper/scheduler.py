"""The swap scheduler: a pure state machine, events in and effects out.

It decides, it never acts: the manager carries out the effects (start a swap,
stop a model) and reports back (swap done, model stopped, request finished).
Because every decision is taken here, in one place, a request racing a TTL
unload is queued until the stop completes and then starts the model again,
instead of reading a stale state and hanging (llama-swap #946).

The scheduler's state is the one record of what runs: the manager keeps
process handles, but whether a model is starting, ready or stopping is only
ever read from :attr:`Scheduler.status`.

Rules, in the order :meth:`Scheduler.request` applies them:
unknown model -> 404; reservations (queued + waiting + in flight) at the
model's limit -> 429; a load of the same model in flight -> join it; ready,
not being evicted and not held for an overdue request -> serve; colliding with
a swap in flight, stopping, or needing to evict a model with requests in
flight -> queue; else start a swap. Swaps whose evictions are disjoint run in
parallel. Draining the queue serves requests for ready models first, so
A B C A B C is served A A B B C C. A model's ``priority`` (llama-swap's fifo
priority) places its requests ahead of lower-priority ones in the queue.

Fairness: collation alone would let steady traffic on a resident model starve
a request that must evict it. Once a queued request has waited
``max_queue_wait`` seconds, the models it must evict are *held*: new requests
for them queue behind it, their in-flight requests drain, and the swap starts.

A swap has two phases: :class:`StartSwap` stops the evicted models, the
manager reports :meth:`Scheduler.evicted`, and only then does :class:`Load`
start the target. An unload arriving in either phase cancels the swap: the
target is never started (or is stopped again) and ends STOPPED.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from .config import DEFAULT_MAX_QUEUE_WAIT
from .errors import shown
from .solver import Solution

RequestId = int


class Status(str, Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


_NOTHING: frozenset[str] = frozenset()  # held() when nothing is overdue


@dataclass(frozen=True)
class Grant:
    """Serve ``req`` now; the model is ready."""

    req: RequestId
    model: str


@dataclass(frozen=True)
class Reject:
    """Answer ``req`` with an error before it took any capacity."""

    req: RequestId
    status: int
    message: str


@dataclass(frozen=True)
class Fail:
    """Answer a waiting or queued ``req`` with an error."""

    req: RequestId
    status: int
    message: str


@dataclass(frozen=True)
class StartSwap:
    """Stop every model in ``evict`` (in parallel), then report :meth:`Scheduler.evicted`.

    ``set_name`` and ``cost`` say why: the residency set chosen and the evict
    cost that made it the cheapest. They explain the decision, so effects
    compare by what they do (``model``, ``evict``) only.
    """

    model: str
    evict: frozenset[str]
    set_name: str | None = field(default=None, compare=False)
    cost: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Load:
    """Start ``model`` (its evictions are done); report :meth:`Scheduler.swap_done`."""

    model: str


@dataclass(frozen=True)
class Stop:
    """Stop ``model``; report back with :meth:`Scheduler.stopped`.

    If a swap for ``model`` is in flight, wait for it to end before reporting.
    ``reason`` ("unload", "ttl", "reconfigure") explains, it does not compare.
    """

    model: str
    reason: str = field(default="", compare=False)


Effect = Grant | Reject | Fail | StartSwap | Load | Stop
Evictions = Callable[[str, frozenset[str]], Solution]


@dataclass(frozen=True)
class ModelLimits:
    """What the scheduler needs to know about one model."""

    concurrency_limit: int
    has_process: bool = True
    priority: int = 0  # llama-swap's fifo priority: higher is queued ahead of lower


class Scheduler:
    """FIFO swap scheduler. Every method returns the effects to carry out."""

    def __init__(self, models: Mapping[str, ModelLimits], evictions: Evictions,
                 max_queue_wait: float = DEFAULT_MAX_QUEUE_WAIT) -> None:
        self._models = dict(models)
        self._evictions = evictions
        self.max_queue_wait = max_queue_wait
        self.status: dict[str, Status] = {m: Status.STOPPED for m, lim in models.items() if lim.has_process}
        self.in_flight: Counter[str] = Counter()
        self.reserved: Counter[str] = Counter()
        self.swaps: dict[str, frozenset[str]] = {}
        self._waiters: dict[str, list[RequestId]] = {}
        self._queue: list[tuple[RequestId, str]] = []
        self._model_of: dict[RequestId, str] = {}
        self._serving: set[RequestId] = set()
        self._stale: set[str] = set()
        self._cancelled: set[str] = set()
        self._queued_at: dict[RequestId, float] = {}
        self._overdue: set[RequestId] = set()

    # -- events -------------------------------------------------------------

    def request(self, req: RequestId, model: str, now: float = 0.0) -> list[Effect]:
        """A new request for ``model`` (already resolved from any alias) at monotonic ``now``.

        The clock is passed in, so the machine stays pure and tests choose the time.
        """
        self._mark_overdue(now)
        limits = self._models.get(model)
        if limits is None:
            return [Reject(req, 404, f"model '{shown(model)}' not found")]
        if self.reserved[model] >= limits.concurrency_limit:
            return [Reject(req, 429, f"too many requests for model '{model}' "
                                     f"(limit {limits.concurrency_limit})")]
        self.reserved[model] += 1
        self._model_of[req] = model
        effects = self._place(req, model, may_swap=not self._queue)
        if effects is None:
            self._enqueue(req, model)
            self._queued_at[req] = now
            return []
        return effects

    def evicted(self, model: str) -> list[Effect]:
        """The models the swap for ``model`` evicts are gone: load it, unless it was unloaded."""
        for evicted in self.swaps.get(model, frozenset()):
            self.status[evicted] = Status.STOPPED
        if model not in self._cancelled:
            return [Load(model)]
        return self.swap_done(model, "unloaded")

    def swap_done(self, model: str, error: str | None = None, status: int = 502) -> list[Effect]:
        """The swap started for ``model`` finished (``error`` and ``status`` if the load failed)."""
        for evicted in self.swaps.pop(model, frozenset()):
            self.status[evicted] = Status.STOPPED
        waiters = self._waiters.pop(model, [])
        effects: list[Effect] = []
        if model in self._cancelled:  # unloaded meanwhile: its Stop reports the end
            self._cancelled.discard(model)
        elif error is None:
            self.status[model] = Status.READY
            effects += [self._grant(req, model) for req in waiters]
            effects += self._retire_idle()
        else:
            self.status[model] = Status.STOPPED
            for req in waiters:
                self._release(req)
                effects.append(Fail(req, status, error))
        return effects + self._drain()

    def finished(self, req: RequestId) -> list[Effect]:
        """A granted request ended (completed, failed or disconnected)."""
        if req not in self._serving:
            return []
        self._serving.discard(req)
        self.in_flight[self._model_of[req]] -= 1
        self._release(req)
        return self._retire_idle() + self._drain()

    def cancel(self, req: RequestId) -> list[Effect]:
        """The client of a queued, waiting or served request went away."""
        if req in self._serving:
            return self.finished(req)
        model = self._model_of.get(req)
        if model is None:
            return []
        if (req, model) in self._queue:
            self._queue.remove((req, model))
        elif req in self._waiters.get(model, ()):
            self._waiters[model].remove(req)  # the load itself carries on
        self._release(req)
        return self._drain()

    def idle_timeout(self, model: str) -> list[Effect]:
        """TTL expired for ``model``: stop it only if nothing uses or wants it."""
        if self.status.get(model) is not Status.READY or self.reserved[model]:
            return []
        if any(model in evict for evict in self.swaps.values()):
            return []
        self.status[model] = Status.STOPPING
        return [Stop(model, "ttl")]

    def unload(self, model: str | None = None) -> list[Effect]:
        """Admin unload of one model or all: queued and waiting requests fail.

        A swap in flight for an unloaded model is cancelled: the model ends
        STOPPED, never READY, whichever phase the swap was in.
        """
        targets = [model] if model is not None else list(self.status)
        effects: list[Effect] = []
        for target in targets:
            if target not in self.status:
                continue
            for req in [r for r, m in self._queue if m == target] + self._waiters.get(target, []):
                effects.append(Fail(req, 503, f"model '{target}' was unloaded"))
                if (req, target) in self._queue:
                    self._queue.remove((req, target))
                self._release(req)
            if target in self._waiters:
                self._waiters[target] = []
            if target in self.swaps:
                self._cancelled.add(target)
            if self.status[target] in (Status.READY, Status.STARTING):
                self.status[target] = Status.STOPPING
                effects.append(Stop(target, "unload"))
        return effects

    def shutdown(self) -> list[Effect]:
        """Everything stops: queued and waiting requests fail, no model is READY any more.

        The caller stops the processes itself; nothing is reported back.
        """
        effects: list[Effect] = []
        pending = [r for r, _ in self._queue] + [r for w in self._waiters.values() for r in w]
        for req in pending:
            effects.append(Fail(req, 503, "the swapper is shutting down"))
            self._release(req)
        self._queue, self._waiters = [], {m: [] for m in self._waiters}
        self._cancelled.update(self.swaps)
        for model, state in self.status.items():
            if state is not Status.STOPPED:
                self.status[model] = Status.STOPPING
        return effects

    def stopped(self, model: str) -> list[Effect]:
        """``model``'s process is gone (a Stop finished, or it exited by itself)."""
        if model in self.swaps:
            return []  # a failed load is reported through swap_done
        self.status[model] = Status.STOPPED
        self._stale.discard(model)
        if model not in self._models:
            del self.status[model]
        return self._drain()

    def reconfigure(self, models: Mapping[str, ModelLimits], evictions: Evictions,
                    changed: set[str]) -> list[Effect]:
        """New config: ``changed`` models retire once idle, requests for them wait for the restart."""
        self._models = dict(models)
        self._evictions = evictions
        for model, limits in models.items():
            if limits.has_process:
                self.status.setdefault(model, Status.STOPPED)
        for model in changed:
            if self.status.get(model, Status.STOPPED) is not Status.STOPPED:
                self._stale.add(model)
            elif model not in models:
                self.status.pop(model, None)
        return self._retire_idle() + self._drain()

    def _retire_idle(self) -> list[Effect]:
        if not self._stale:
            return []
        effects: list[Effect] = []
        for model in sorted(self._stale):
            if self.status.get(model) is Status.READY and not self.in_flight[model]:
                self.status[model] = Status.STOPPING
                effects.append(Stop(model, "reconfigure"))
        return effects

    # -- queries ------------------------------------------------------------

    def running(self) -> frozenset[str]:
        return frozenset(m for m, s in self.status.items() if s in (Status.STARTING, Status.READY))

    def queued(self) -> list[tuple[RequestId, str]]:
        return list(self._queue)

    # -- internals ----------------------------------------------------------

    def _grant(self, req: RequestId, model: str) -> Grant:
        self.in_flight[model] += 1
        self._serving.add(req)
        return Grant(req, model)

    def _release(self, req: RequestId) -> None:
        model = self._model_of.pop(req)
        self.reserved[model] -= 1
        self._queued_at.pop(req, None)
        self._overdue.discard(req)

    def _enqueue(self, req: RequestId, model: str) -> None:
        """Queue ``req`` behind every request of its priority or higher (FIFO within one)."""
        def rank(m: str) -> int:
            limits = self._models.get(m)
            return limits.priority if limits is not None else 0

        at = next((i for i, (_, m) in enumerate(self._queue) if rank(m) < rank(model)),
                  len(self._queue))
        self._queue.insert(at, (req, model))

    def _being_evicted(self, model: str) -> bool:
        return bool(self.swaps) and any(model in evict for evict in self.swaps.values())

    def _mark_overdue(self, now: float) -> None:
        """Queued requests that have waited ``max_queue_wait`` become overdue (FIFO: oldest first)."""
        for req, _ in self._queue:
            if req in self._overdue:
                continue
            if now - self._queued_at.get(req, now) < self.max_queue_wait:
                return
            self._overdue.add(req)

    def held(self) -> frozenset[str]:
        """Models that overdue queued requests must evict: new requests for them queue."""
        if not self._overdue:
            return _NOTHING
        running = self.running()
        return frozenset().union(*(self._evictions(self._model_of[req], running).evict
                                   for req in self._overdue))

    def _place(self, req: RequestId, model: str, may_swap: bool) -> list[Effect] | None:
        """Serve, join or start a swap for ``req``; None means it must wait in the queue."""
        if model not in self.status:  # no process: always ready
            return [self._grant(req, model)]
        if model in self.swaps and model not in self._cancelled and model not in self._stale:
            self._waiters[model].append(req)
            return []
        state = self.status[model]
        if (state is Status.READY and not self._being_evicted(model) and model not in self._stale
                and model not in self.held()):
            return [self._grant(req, model)]
        if state is not Status.STOPPED or not may_swap or self._being_evicted(model):
            return None
        choice = self._evictions(model, self.running())
        evict = choice.evict
        for target, evicting in self.swaps.items():
            if target in evict or evict & evicting:
                return None
        if any(self.in_flight[m] for m in evict):
            return None  # never stop a model that is serving; wait for it to drain
        self.swaps[model] = evict
        self._waiters[model] = [req]
        self.status[model] = Status.STARTING
        for m in evict:
            self.status[m] = Status.STOPPING
        return [StartSwap(model, evict, choice.set_name, choice.cost)]

    def _drain(self) -> list[Effect]:
        """Place queued requests: ready models first (collation), then swaps in FIFO order."""
        if not self._queue:
            return []
        effects: list[Effect] = []
        for may_swap in (False, True):
            still: list[tuple[RequestId, str]] = []
            for req, model in self._queue:
                placed = self._place(req, model, may_swap)
                if placed is None:
                    still.append((req, model))
                else:
                    effects += placed
            self._queue = still
        return effects
