"""What the stack is doing and why, read from the event bus: the facts /ui, /api, top show.

:class:`RequestMeter` measures one proxied request (status, time to first byte,
total time, generated tokens from the answer's ``usage``/``timings``) and
publishes one ``request_done`` event. :class:`Observer` subscribes to the bus
and keeps the recent history (decisions, swaps, failures); :meth:`Observer.snapshot`
joins it with the scheduler's live state (the one record of what runs).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from .events import Event, EventBus

if TYPE_CHECKING:
    from .manager import Manager

Send = Callable[[dict[str, Any]], Awaitable[None]]
DECISIONS = 50
SWAPS = 20
LOG_TAIL = 20
STATE_KINDS = frozenset({
    "swap_started", "model_starting", "model_ready", "load_failed", "model_stopping",
    "model_stopped", "model_exited", "reconfigured",
})
_COMPLETION_TOKENS = re.compile(rb'"(?:completion_tokens|predicted_n)"\s*:\s*(\d+)')
_TOKENS_PER_SECOND = re.compile(rb'"predicted_per_second"\s*:\s*([0-9.eE+-]+)')


def generated(tail: bytes) -> tuple[int | None, float | None]:
    """Generated tokens and llama-server's tokens/s from the end of an answer (last match wins)."""
    tokens = _COMPLETION_TOKENS.findall(tail)
    rates = _TOKENS_PER_SECOND.findall(tail)
    try:
        rate = float(rates[-1]) if rates else None
    except ValueError:
        rate = None
    return (int(tokens[-1]) if tokens else None), rate


class RequestMeter:
    """Wraps one request's ``send``; publishes ``request_done`` when the answer ends.

    Per chunk it only keeps a reference to the last two chunks, so the hot path
    pays one attribute swap; the tail is searched once, at the end.
    """

    __slots__ = ("_bus", "_done", "_first", "_last", "_prev", "_t0", "context", "downstream",
                 "model", "path", "status")

    def __init__(self, bus: EventBus, send: Send, model: str, path: str,
                 context: Mapping[str, Any] | None = None) -> None:
        self._bus = bus
        self.downstream = send
        self.model = model
        self.path = path
        self.context = context
        self._t0 = time.perf_counter()
        self.status = 0
        self._first = 0.0
        self._prev = self._last = b""
        self._done = False

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body:
                if not self._first:
                    self._first = time.perf_counter()
                self._prev, self._last = self._last, body
            if not message.get("more_body", False):
                await self.downstream(message)
                self.finish()
                return
        elif message["type"] == "http.response.start":
            self.status = message["status"]
        await self.downstream(message)

    def finish(self, status: int | None = None) -> None:
        """Publish the record once (``status`` for an error answered before any byte)."""
        if self._done:
            return
        self._done = True
        now = time.perf_counter()
        tokens, rate = generated(self._prev[-2048:] + self._last[-4096:])
        first = self._first or now
        if rate is None and tokens and now - first > 0.001:
            rate = tokens / (now - first)
        self._bus.publish("request_done", model=self.model, path=self.path,
                          status=status or self.status or 500,
                          ttft_ms=round((first - self._t0) * 1000, 1),
                          ms=round((now - self._t0) * 1000, 1), tokens=tokens,
                          tps=round(rate, 1) if rate is not None else None,
                          **(self.context or {}))


class Observer:
    """Recent history from the bus: routing decisions, swaps, why models failed or stopped."""

    def __init__(self, bus: EventBus) -> None:
        self.decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS)
        self.swaps: deque[dict[str, Any]] = deque(maxlen=SWAPS)
        self.since: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.stop_reason: dict[str, str] = {}
        self.load_ms: dict[str, float] = {}
        self._open_swaps: dict[str, dict[str, Any]] = {}
        self.unsubscribe = bus.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        kind, fields = event.kind, event.fields
        if kind == "request_done":
            self.decisions.append(event.as_dict())
            return
        model = fields.get("model")
        if kind not in STATE_KINDS or not isinstance(model, str):
            return
        self.since[model] = event.ts
        if kind == "swap_started":
            swap = event.as_dict()
            self._open_swaps[model] = swap
            self.swaps.append(swap)
        elif kind == "model_starting":
            self.failed.pop(model, None)
        elif kind in ("model_ready", "load_failed"):
            self.load_ms[model] = fields.get("ms", 0.0)
            opened = self._open_swaps.pop(model, None)
            if opened is not None:
                opened.update(ms=fields.get("ms"), result="ready" if kind == "model_ready"
                            else f"failed: {fields.get('error', '')}")
            if kind == "load_failed":
                self.failed[model] = str(fields.get("error", "load failed"))
        elif kind == "model_exited":
            self.failed[model] = f"exited with code {fields.get('code')}"
        elif kind == "model_stopping":
            self.stop_reason[model] = str(fields.get("reason", ""))

    def snapshot(self, manager: Manager) -> dict[str, Any]:
        """Every model's state (scheduler), load and queue, memory against the budget, history."""
        sched = manager.scheduler
        now = time.time()
        models: list[dict[str, Any]] = []
        for spec in manager.config.models.values():
            model = spec.id
            status = sched.status.get(model)
            state = status.value if status is not None else "always ready"
            if state == "stopped" and model in self.failed:
                state = "failed"
            process = manager.processes.get(model)
            since = self.since.get(model)
            log = manager.logs[model].tail(LOG_TAIL) if model in manager.logs else []
            failure = self.failed.get(model)
            own = [line for line in log if not line.startswith("[swapper]")]
            if failure and failure.endswith(":") and own:  # "...; last log lines:"
                failure += " " + own[-1]
            models.append({
                "model": model, "name": spec.name or model, "state": state,
                "since": round(since, 3) if since else None,
                "elapsed_s": round(now - since, 1) if since else None,
                "failure": failure, "stop_reason": self.stop_reason.get(model),
                "in_flight": sched.in_flight[model],
                "queued": max(sched.reserved[model] - sched.in_flight[model], 0),
                "memory_mb": spec.memory_mb, "ttl": spec.ttl,
                "pid": process.pid if process else None, "port": process.port if process else None,
                "last_load_ms": self.load_ms.get(model), "meta": dict(spec.metadata),
                "log": log,
            })
        resident = sum(float(m["memory_mb"]) for m in models
                       if m["state"] in ("starting", "ready", "stopping"))
        return {"ts": round(now, 3), "models": models,
                "memory": {"budget_mb": manager.config.memory_budget_mb,
                           "resident_mb": round(resident, 1)},
                "decisions": list(self.decisions), "swaps": list(self.swaps)}
