"""Prometheus metrics (GET /metrics), fed by the event bus like the logs and /ui.

Counters and histograms move in a bus subscriber, once per finished request,
swap or routing decision; gauges (resident models, memory, queue depth) are
read from the scheduler at scrape time. Each app has its own registry, so
several apps in one process (tests) never share counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .events import Event, EventBus

if TYPE_CHECKING:
    from .manager import Manager

_RULE = re.compile(r"[a-z>-]+")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TPS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
_SWAP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


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


class Metrics:
    """One registry for one app; subscribe with :meth:`on_event`, render with :meth:`render`."""

    def __init__(self, manager: Manager, bus: EventBus) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("swapper_requests", "proxied requests answered",
                                ["model", "endpoint", "status"], registry=reg)
        self.decisions = Counter("llmstack_routing_decisions", "auto-routing decisions",
                                 ["tier", "reason"], registry=reg)
        self.ttft = Histogram("swapper_time_to_first_byte_seconds",
                              "request start to the answer's first body byte (first token when "
                              "streamed)", ["model"], buckets=_LATENCY_BUCKETS, registry=reg)
        self.latency = Histogram("swapper_request_duration_seconds", "total request time",
                                 ["model"], buckets=_LATENCY_BUCKETS, registry=reg)
        self.tokens = Counter("swapper_generated_tokens", "tokens generated (usage/timings)",
                              ["model"], registry=reg)
        self.tps = Histogram("swapper_tokens_per_second", "generation speed per request",
                             ["model"], buckets=_TPS_BUCKETS, registry=reg)
        self.swaps = Counter("swapper_swaps", "model loads by result", ["model", "result"],
                             registry=reg)
        self.swap_seconds = Histogram("swapper_swap_duration_seconds",
                                      "swap start (evictions included) to ready or failed",
                                      ["model"], buckets=_SWAP_BUCKETS, registry=reg)
        reg.register(_Live(manager))
        self.unsubscribe = bus.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        kind, f = event.kind, event.fields
        if kind == "request_done":
            model = str(f.get("model"))
            self.requests.labels(model, str(f.get("path")), str(f.get("status"))).inc()
            self.ttft.labels(model).observe(_seconds(f.get("ttft_ms")))
            self.latency.labels(model).observe(_seconds(f.get("ms")))
            if f.get("tokens"):
                self.tokens.labels(model).inc(f["tokens"])
            if f.get("tps"):
                self.tps.labels(model).observe(f["tps"])
        elif kind == "routed":
            self.decisions.labels(str(f.get("tier")), reason_label(str(f.get("reason")))).inc()
        elif kind in ("model_ready", "load_failed"):
            model = str(f.get("model"))
            self.swaps.labels(model, "ready" if kind == "model_ready" else "failed").inc()
            self.swap_seconds.labels(model).observe(_seconds(f.get("ms")))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def reason_label(reason: str) -> str:
    """The rule behind a reason string, without its numbers (bounded label values)."""
    match = _RULE.match(reason)
    label = match.group(0).rstrip("-") if match else "other"
    if " -> " in reason:
        label += "+context-fit"
    if "session floor" in reason:
        label += "+session-floor"
    return label


def _seconds(ms: Any) -> float:
    return float(ms or 0.0) / 1000
