"""What the stack is doing and why, read from the event bus: the facts /ui, /api, top show.

:class:`RequestMeter` measures one proxied request (status, time to first byte,
total time, generated tokens from the answer's ``usage``/``timings``) from its
reply and publishes one ``request_done`` event. :class:`Observer` subscribes to the bus
and keeps the recent history (decisions, swaps, failures); :meth:`Observer.snapshot`
joins it with the scheduler's live state (the one record of what runs).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import shown
from .events import Event, EventBus

if TYPE_CHECKING:
    from .manager import Manager
    from .reply import Reply

DECISIONS = 50
SWAPS = 20
LOG_TAIL = 20
STATE_KINDS = frozenset({
    "swap_started", "model_starting", "model_ready", "load_failed", "model_stopping",
    "model_stopped", "model_exited", "reconfigured",
})
_NUMBER = re.compile(rb'\s*:\s*([0-9.eE+-]+)')


_TOKEN_KEYS = (b'"completion_tokens"', b'"output_tokens"', b'"predicted_n"')
"""Generated tokens: OpenAI chat/completions usage, Anthropic Messages and Responses usage,
llama-server's timings."""
_RATE_KEY = b'"predicted_per_second"'


def _number_after(tail: bytes, key: bytes, at: int) -> bytes | None:
    """The number after ``key`` found at ``at`` (None when ``at`` < 0 or no number follows)."""
    match = _NUMBER.match(tail, at + len(key)) if at >= 0 else None
    return match.group(1) if match is not None else None


def generated(tail: bytes) -> tuple[int | None, float | None]:
    """Generated tokens and llama-server's tokens/s from the end of an answer (whichever of
    :data:`_TOKEN_KEYS` comes last, and the last ``predicted_per_second``)."""
    at, key = max((tail.rfind(key), key) for key in _TOKEN_KEYS)
    tokens = _number_after(tail, key, at)
    rate = _number_after(tail, _RATE_KEY, tail.rfind(_RATE_KEY))
    try:
        return (int(tokens) if tokens else None), (float(rate) if rate else None)
    except ValueError:
        return None, None


class RequestMeter:
    """Publishes one ``request_done`` record for one proxied request, read from its
    :class:`~swapper.reply.Reply` (no ``send`` wrapper of its own: the hot path pays nothing)."""

    __slots__ = ("_bus", "_done", "_t0", "context", "model", "path")

    def __init__(self, bus: EventBus, model: str, path: str,
                 context: Mapping[str, Any] | None = None, started: float | None = None) -> None:
        """``started``: the request's ``perf_counter`` start (default: now)."""
        self._bus = bus
        self.model = model
        self.path = shown(path)  # an /upstream/ path is the client's: kept in the history
        self.context = context
        self._t0 = time.perf_counter() if started is None else started
        self._done = False

    def finish(self, reply: Reply, status: int = 0) -> None:
        """Publish the record once: ``status`` (else the reply's), time to the reply's first
        body byte, total time, and the tokens found at the end of the answer."""
        if self._done:
            return
        self._done = True
        now = time.perf_counter()
        tokens, rate = generated(reply.prev[-2048:] + reply.last[-4096:])
        first = reply.first_at or now
        if rate is None and tokens and now - first > 0.001:
            rate = tokens / (now - first)
        self._bus.publish("request_done", model=self.model, path=self.path,
                          status=status or reply.status or 500,
                          ttft_ms=round((first - self._t0) * 1000, 1),
                          ms=round((now - self._t0) * 1000, 1), tokens=tokens,
                          tps=round(rate, 1) if rate is not None else None,
                          **(self.context or {}))


class Observer:
    """Recent history from the bus: routing decisions, swaps, why models failed or stopped."""

    def __init__(self, bus: EventBus) -> None:
        self._decisions: deque[Event] = deque(maxlen=DECISIONS)  # as dicts when read
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
            if fields.get("via") != "upstream":  # a pass-through is no routing decision
                self._decisions.append(event)
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

    @property
    def decisions(self) -> list[dict[str, Any]]:
        """The last :data:`DECISIONS` finished requests, oldest first (``/upstream/...``
        pass-throughs are not decisions)."""
        return [event.as_dict() for event in self._decisions]

    def snapshot(self, manager: Manager) -> dict[str, Any]:
        """Every model's state (scheduler), load and queue, memory against the budget, history,
        the session cache."""
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
                           "budget_source": manager.config.memory_budget_source,
                           "resident_mb": round(resident, 1)},
                "decisions": self.decisions, "swaps": list(self.swaps),
                "sessions": manager.session_status()}
