"""Prometheus metrics (GET /metrics), fed by the event bus like the logs and /ui.

Counters and histograms move in a bus subscriber, once per finished request or
swap (the per-request ones as plain counts, rendered when scraped); gauges
(resident models, memory, queue depth) are read from the scheduler at scrape
time. Each app has its own registry, so several apps in one process (tests)
never share counts; a program embedding the swapper adds its own series to it
(:meth:`Metrics.register`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .events import Event, EventBus

if TYPE_CHECKING:
    from .manager import Manager

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TPS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
_SWAP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
OTHER = "other"
STATUSES = frozenset({200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 422, 429, 431,
                      499, 500, 501, 502, 503, 504})
"""Statuses labelled as themselves; any other is its class (``2xx`` .. ``5xx``)."""


class _Live(Collector):
    """Gauges read from the manager when scraped."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sched, specs = self.manager.scheduler, self.manager.config.models
        resident = GaugeMetricFamily("swapper_model_resident",
                                     "1 when the model is starting, ready or stopping",
                                     labels=["model"])
        memory = GaugeMetricFamily("swapper_model_memory_bytes",
                                   "estimated memory of a resident model", labels=["model"])
        in_flight = GaugeMetricFamily("swapper_requests_in_flight", "requests being served",
                                      labels=["model"])
        queued = GaugeMetricFamily("swapper_requests_queued",
                                   "requests waiting for a load or a swap", labels=["model"])
        for model, status in sched.status.items():
            up = status.value != "stopped"
            resident.add_metric([model], 1.0 if up else 0.0)
            spec = specs.get(model)
            memory.add_metric([model], (spec.memory_mb if spec and up else 0.0) * 2**20)
        for model in specs:
            in_flight.add_metric([model], float(sched.in_flight[model]))
            queued.add_metric([model], float(max(sched.reserved[model] - sched.in_flight[model],
                                                 0)))
        budget = GaugeMetricFamily("swapper_memory_budget_bytes", "the residency memory budget")
        budget.add_metric([], self.manager.config.memory_budget_mb * 2**20)
        yield from (resident, memory, in_flight, queued, budget)


class _Histogram:
    """One histogram's buckets as plain counts (``le`` semantics), summed up when scraped."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(cumulative)))
        return out


class _PerRequest(Collector):
    """The per-request series (requests, latencies, tokens), counted in
    plain dicts by the bus subscriber and turned into metric families only when scraped:
    prometheus-client's own Counter/Histogram cost a lock and a bucket scan per update,
    about 4 µs per request on the hot path.

    Every label value comes from a closed set, whatever a request carried: a model that
    ``known`` accepts (or ``-``, none), an endpoint in ``endpoints``, a status in
    :data:`STATUSES` or its class; anything else is ``other``."""

    def __init__(self, known: Callable[[str], bool], endpoints: frozenset[str]) -> None:
        self.known = known
        self.endpoints = endpoints
        self.requests: dict[tuple[str, str, str], int] = {}
        self.tokens: dict[str, int] = {}
        self.ttft: dict[str, _Histogram] = {}
        self.latency: dict[str, _Histogram] = {}
        self.tps: dict[str, _Histogram] = {}

    def request_done(self, f: dict[str, Any]) -> None:
        model, path = f.get("model"), f.get("path")
        if not (isinstance(model, str) and (model == "-" or self.known(model))):
            model = OTHER
        endpoint = path if isinstance(path, str) and path in self.endpoints else OTHER
        key = (model, endpoint, status_label(f.get("status")))
        self.requests[key] = self.requests.get(key, 0) + 1
        latency = self.latency.get(model)
        if latency is None:
            latency = self.latency[model] = _Histogram(_LATENCY_BUCKETS)
            self.ttft[model] = _Histogram(_LATENCY_BUCKETS)
        self.ttft[model].observe(_seconds(f.get("ttft_ms")))
        latency.observe(_seconds(f.get("ms")))
        tokens, tps = f.get("tokens"), f.get("tps")
        if tokens:
            self.tokens[model] = self.tokens.get(model, 0) + tokens
        if tps:
            if model not in self.tps:
                self.tps[model] = _Histogram(_TPS_BUCKETS)
            self.tps[model].observe(tps)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("swapper_requests", "proxied requests answered",
                                       labels=["model", "endpoint", "status"])
        for key, count in self.requests.items():
            requests.add_metric(list(key), count)
        tokens = CounterMetricFamily("swapper_generated_tokens",
                                     "tokens generated (usage/timings)", labels=["model"])
        for model, count in self.tokens.items():
            tokens.add_metric([model], count)
        yield from (requests, tokens)
        for name, doc, series in (
                ("swapper_time_to_first_byte_seconds", "request start to the answer's first "
                 "body byte (first token when streamed)", self.ttft),
                ("swapper_request_duration_seconds", "total request time", self.latency),
                ("swapper_tokens_per_second", "generation speed per request", self.tps)):
            family = HistogramMetricFamily(name, doc, labels=["model"])
            for model, histogram in series.items():
                family.add_metric([model], histogram.buckets(), histogram.total)
            yield family


_VERDICTS = frozenset({"ok", "miss", "broken", "unknown"})


class _Sessions(Collector):
    """The session cache (:mod:`swapper.sessions`): tokens restored, saves and restores by
    outcome, counted from the bus; bytes and sessions on disk read when scraped. Labels: a
    configured model (else ``other``), a save's ``saved`` / ``failed``, a restore's verdict."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.restored: dict[str, int] = {}
        self.saves: dict[tuple[str, str], int] = {}
        self.verdicts: dict[tuple[str, str], int] = {}
        self.discarded: dict[str, int] = {}

    def on_event(self, kind: str, fields: dict[str, Any]) -> None:
        model = fields.get("model")
        model = model if isinstance(model, str) and model in self.manager.config.models else OTHER
        if kind == "session_restored":
            self.restored[model] = self.restored.get(model, 0) + int(fields.get("tokens") or 0)
        elif kind in ("session_saved", "session_save_failed"):
            key = (model, "saved" if kind == "session_saved" else "failed")
            self.saves[key] = self.saves.get(key, 0) + 1
        elif kind == "session_verified":
            verdict = fields.get("verdict")
            key = (model, verdict if verdict in _VERDICTS else OTHER)
            self.verdicts[key] = self.verdicts.get(key, 0) + 1
        elif kind == "session_discarded":
            self.discarded[model] = self.discarded.get(model, 0) + 1

    def collect(self) -> Iterator[Metric]:
        for name, doc, labels, counts in (
                ("swapper_session_tokens_restored", "prompt tokens restored from saved sessions",
                 ["model"], self.restored),
                ("swapper_session_saves", "sessions saved when their model stopped, by result",
                 ["model", "result"], self.saves),
                ("swapper_session_restores", "restores judged by the first answer after them",
                 ["model", "verdict"], self.verdicts),
                ("swapper_session_discarded", "saved sessions deleted (over the cap, settings "
                 "or model file changed, refused)", ["model"], self.discarded)):
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, count in counts.items():
                family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
            yield family
        cache = self.manager.session_cache
        status = cache.status() if cache is not None else {}
        for name, doc, field in (("swapper_session_cache_bytes", "bytes of saved sessions on disk",
                                  "bytes"),
                                 ("swapper_session_cache_max_bytes", "the cap on them", "max_bytes"),
                                 ("swapper_session_cache_sessions", "saved sessions", "sessions")):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(status.get(field, 0)))
            yield gauge


class Metrics:
    """One registry for one app; subscribe with :meth:`on_event`, render with :meth:`render`.

    ``endpoints``: the paths labelled as themselves; ``known`` (default: the configured
    models) may be replaced by a caller that serves more names (llmstack's hosted tiers)."""

    def __init__(self, manager: Manager, bus: EventBus,
                 endpoints: frozenset[str] = frozenset()) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.per_request = _PerRequest(lambda model: model in manager.config.models, endpoints)
        reg.register(self.per_request)
        self.swaps = Counter("swapper_swaps", "model loads by result", ["model", "result"],
                             registry=reg)
        self.swap_seconds = Histogram("swapper_swap_duration_seconds",
                                      "swap start (evictions included) to ready or failed",
                                      ["model"], buckets=_SWAP_BUCKETS, registry=reg)
        reg.register(_Live(manager))
        self.sessions = _Sessions(manager)
        reg.register(self.sessions)
        self.unsubscribe = bus.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        kind = event.kind
        if kind == "request_done":
            self.per_request.request_done(event.fields)
        elif kind in ("model_ready", "load_failed"):
            model = str(event.fields.get("model"))
            self.swaps.labels(model, "ready" if kind == "model_ready" else "failed").inc()
            self.swap_seconds.labels(model).observe(_seconds(event.fields.get("ms")))
        elif kind.startswith("session_"):
            self.sessions.on_event(kind, event.fields)

    def register(self, collector: Collector) -> None:
        """Add ``collector``'s series to this registry (a program's own, beside the swapper's)."""
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def status_label(status: Any) -> str:
    """A status as a label: itself if common (:data:`STATUSES`), else its class, or other."""
    if status in STATUSES:
        return str(status)
    return f"{status // 100}xx" if isinstance(status, int) and 100 <= status <= 599 else OTHER


def _seconds(ms: Any) -> float:
    return float(ms or 0.0) / 1000
