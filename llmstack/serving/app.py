"""The llmstack ASGI app: router endpoints composed over the swapper, in one process.

A request flows app -> (auto? classify) -> tier -> ``manager.lease(tier)`` ->
proxy stream back, with no second HTTP hop. Reload (POST /reload or SIGHUP)
re-reads models.ini: unchanged tiers keep running, in-flight streams finish,
and an invalid file keeps the old config and reports its file:line errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from swapper.config import ConfigError, SwapperConfig
from swapper.errors import ApiError, request_model, shown
from swapper.events import Event, EventBus
from swapper.http_app import ModelRequest, SwapperApp, header, json_object, read_body
from swapper.manager import Manager
from swapper.observe import RequestMeter
from swapper.proxy import Hooks, Intercepted
from swapper.reply import DisconnectWatch, Reply, openai_error_body, send_bytes, send_json
from swapper.routes import POST, Route, Router, lifespan, path_param, routes
from swapper.types import Headers, Receive, Scope, Send

from ..config.ini import ModelsIniError, read_models_ini
from ..config.schema import Stack, Tier
from .hosted import HostedTiers
from .output_cap import PROTOCOL_FIELDS, BadOutputField, asked_output, clamp, output_limit
from .protocols import (
    ANTHROPIC_PATHS,
    CHAT,
    CONTEXT_CODE,
    CONTEXT_OVERFLOW,
    ERROR_STATUSES,
    ROUTED_PATHS,
    TierName,
    anthropic_error,
    client_error,
)
from .routing import (
    ContextTooLarge,
    Decision,
    NoRoutableTier,
    RoutingTable,
    SessionFloors,
    classify,
    estimate_tokens,
    requested_output,
    step_up,
)
from .routing_memo import RoutingMemo

log = logging.getLogger("llmstack")
# a too-long prompt: llama-server's error type, and the code hosted tiers answer with
_CONTEXT_OVERFLOW = (CONTEXT_OVERFLOW, CONTEXT_CODE.encode())
SESSION_HEADERS = (b"x-session-affinity", b"x-session-id")
HOSTED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/messages"})
"""The endpoints hosted (litellm) tiers answer."""
MAX_TOKENS_HEADER = b"x-llmstack-max-tokens"
"""On a generating endpoint's answer: the output limit the tier was asked for."""


@dataclass(frozen=True)
class Loaded:
    """One consistent generation of configuration."""

    stack: Stack
    table: RoutingTable
    swapper: SwapperConfig
    hosted: HostedTiers = field(default_factory=HostedTiers)
    """The tiers litellm serves (hosted, multi-machine)."""


Loader = Callable[[], Loaded]
_RULE = re.compile(r"[a-z>-]+")


def reason_label(reason: str) -> str:
    """The rule behind a routing reason, without its numbers (bounded label values)."""
    match = _RULE.match(reason)
    label = match.group(0).rstrip("-") if match else "other"
    if " -> " in reason:
        label += "+context-fit"
    if "session floor" in reason:
        label += "+session-floor"
    return label


class RoutingDecisions(Collector):
    """``llmstack_routing_decisions_total{tier, reason}``: the bus's ``routed`` events, by
    tier and rule (:func:`reason_label`), counted as they come and rendered when scraped."""

    def __init__(self, bus: EventBus) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.kind == "routed":
            key = (str(event.fields.get("tier")), reason_label(str(event.fields.get("reason"))))
            self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        decisions = CounterMetricFamily("llmstack_routing_decisions", "auto-routing decisions",
                                        labels=["tier", "reason"])
        for key, count in self.counts.items():
            decisions.add_metric(list(key), count)
        yield decisions


async def _until_disconnect(scope: Scope, receive: Receive, reply: Reply,
                            answer: Callable[[Send], Awaitable[None]]) -> ApiError | None:
    """Run ``answer`` (a litellm-served reply), cancelled if the client leaves first, so a
    hosted provider stops generating (and billing); its ApiError is returned, not raised."""
    watch = DisconnectWatch(scope, receive, reply)
    try:
        await answer(reply.send)
    except ApiError as error:
        return error
    except asyncio.CancelledError:
        if not watch.disconnected:
            raise
    finally:
        watch.close()
    return None


def _anthropic_body(error: ApiError) -> bytes:
    """The Messages endpoints: the router's own errors in Anthropic's shape too."""
    return anthropic_error(error.status, error.message)


def _session_id(scope: Scope) -> str:
    """The first of :data:`SESSION_HEADERS` the request carries, "" when none."""
    return next(filter(None, (header(scope, h) for h in SESSION_HEADERS)), "")


def _tier_headers(tier: str, tokens: int) -> Headers:
    return [(b"x-llmstack-tokens", str(tokens).encode()), (b"x-llmstack-tier", tier.encode())]


def _checked_output(path: str, data: dict[str, Any]) -> None:
    """400 for an output field (``max_tokens``, ...) that is not an integer or null."""
    if path in PROTOCOL_FIELDS:
        try:
            asked_output(data)
        except BadOutputField as exc:
            raise ApiError(400, str(exc)) from None


def _capped(request: ModelRequest, tier: Tier | None, estimate: int,
            encode: bool) -> ModelRequest:
    """``request`` clamped to ``tier``'s output limit (:mod:`llmstack.serving.output_cap`):
    its data (and, with ``encode``, for a local tier, its body: re-encoded only when a field
    changes) asks for at most that many tokens, and its answer names the number in
    ``x-llmstack-max-tokens``. ``estimate``: the prompt's token estimate."""
    data = request.data
    if tier is None or data is None:
        return request
    clamped = clamp(data, request.path, output_limit(tier.max_output_tokens, tier.ctx_size,
                                                     estimate),
                    fill=tier.backend == "gguf" or tier.max_output_tokens > 0)
    if clamped.tokens is None:
        return request
    hooks = replace(request.hooks, extra_headers=(
        *request.hooks.extra_headers, (MAX_TOKENS_HEADER, str(clamped.tokens).encode())))
    if not clamped.changes:
        return replace(request, hooks=hooks)
    data = {**data, **clamped.changes}
    body = json.dumps(data, separators=(",", ":")).encode() if encode else request.body
    return replace(request, body=body, data=data, hooks=hooks)


def _tier_request(tier: str, path: str, body: bytes, data: dict[str, Any], extra: Headers,
                  context: dict[str, Any]) -> ModelRequest:
    """A request for ``tier``: its answer names the tier and carries ``extra`` headers; an
    error answer is held back (to re-shape it, or step up from it)."""
    return ModelRequest(tier, path, body, data, Hooks(TierName(tier), extra, ERROR_STATUSES),
                        context)


class LLMStackApp:
    """One ASGI app: /models.ini, /v1/models with ``auto``, auto routing, reload, and the swapper."""

    def __init__(self, loader: Loader, models_ini: Path | None, swapper: SwapperApp,
                 loaded: Loaded) -> None:
        self.loader = loader
        self.models_ini = models_ini
        self.swapper = swapper
        self.loaded = loaded
        # hosted tiers and "auto" are metric labels too (not in the swapper's config)
        metrics = swapper.status_api.metrics
        metrics.per_request.known = (
            lambda name: name == "auto" or self.loaded.stack.tier(name) is not None)
        metrics.register(RoutingDecisions(swapper.manager.bus))
        self.floors = SessionFloors()
        self.routing_memo = RoutingMemo()
        self.shutdown_hooks: list[Callable[[], None]] = []
        """Run after the models are stopped (uvicorn re-raises SIGTERM, so no finally runs)."""
        self.router = Router([
            *routes(ROUTED_PATHS, self._completion, POST),
            *routes(("/v1/models", "/models"), self._models),
            Route("/v1/models/{model:path}", self._model_entry),
            Route("/models.ini", self._models_ini),
            Route("/reload", self._reload, POST),
            *swapper.routes,
        ])
        """llmstack's routes, then the swapper's."""

    @property
    def manager(self) -> Manager:
        return self.swapper.manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, self._startup, self._shutdown)
        elif scope["type"] == "http":
            render = _anthropic_body if scope["path"] in ANTHROPIC_PATHS else openai_error_body
            await self.swapper.serve_http(scope, receive, send, self.router, render)

    async def _startup(self) -> None:
        await self.swapper.startup()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_quietly()))

    async def _shutdown(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self.swapper.shutdown()
        for hook in self.shutdown_hooks:
            hook()

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        rows = self.model_list()
        await self._add_backend_health(rows)
        await send_json(send, 200, {"object": "list", "data": rows})

    async def _model_entry(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self.model_entry(path_param(scope, "model")))

    async def _reload(self, scope: Scope, receive: Receive, send: Send) -> None:
        changed = await self.reload()
        await send_json(send, 200, {"reloaded": True, "restarted": changed})

    async def _models_ini(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            text = read_models_ini(self.models_ini) if self.models_ini is not None else None
        except FileNotFoundError:
            text = None
        except ModelsIniError as exc:
            raise ApiError(500, f"models.ini cannot be read: {exc}") from None
        if text is None:
            raise ApiError(404, "no models.ini: llmstack is serving the built-in demo stack "
                                "(set LLMSTACK_MODELS_INI or pass --models-ini)")
        await send_bytes(send, 200, text.encode(), "text/plain; charset=utf-8")

    async def _add_backend_health(self, rows: list[dict[str, Any]]) -> None:
        """Multi-machine tiers' rows list each backend's health."""
        hosted = self.loaded.hosted
        health = dict(zip(hosted.backends, await asyncio.gather(
            *(b.health() for b in hosted.backends.values())), strict=True))
        for row in rows:
            if row.get("tier") in health:
                row["backends"] = health[row["tier"]]

    def model_list(self) -> list[dict[str, Any]]:
        """``auto`` first, then every tier and its aliases."""
        table = self.loaded.table
        rungs = "/".join(r.name for r in table.rungs if r is not None)
        rows: list[dict[str, Any]] = [{
            "id": "auto", "object": "model", "created": 0, "owned_by": "llmstack",
            "name": f"Auto (step-down router: {rungs})",
            "description": table.describe(),
        }]
        for tier in self.loaded.stack.tiers:
            base = {"object": "model", "created": 0, "owned_by": "llmstack", "tier": tier.name,
                    "role": tier.role, "backend": tier.backend, "context_length": tier.ctx_size,
                    "max_output_tokens": tier.max_output_tokens,
                    **({"hosted_model": tier.model} if tier.backend == "litellm" else {})}
            rows.append({"id": tier.name, "name": tier.description or tier.name, **base})
            rows += [{"id": alias, "name": f"{tier.description or tier.name} (alias of {tier.name})",
                      **base} for alias in tier.effective_aliases]
        return rows

    def model_entry(self, model_id: str) -> dict[str, Any]:
        """``GET /v1/models/{id}``: the row of ``auto``, a tier or an alias; 404 otherwise."""
        row = next((r for r in self.model_list() if r["id"] == model_id), None)
        if row is None:
            raise ApiError(404, f"model '{shown(model_id)}' not found", "model_not_found")
        return row

    def _named(self, model: Any) -> str:
        model = request_model(model)
        found = self.loaded.stack.tier(model)
        tier = found.name if found else model
        self.manager.bus.publish("named", tier=tier, model=model)
        return tier

    def _serving_tier(self, job: str, path: str) -> str:
        """``auto`` on an embeddings or rerank endpoint: the first tier with that role."""
        tier = self.loaded.stack.first_with_role(job)
        if tier is None:
            raise ApiError(404, f"model 'auto' cannot route {path}: no tier has role = {job}; "
                                "add one to models.ini or ask for a model by name",
                           "model_not_found")
        self.manager.bus.publish("routed", tier=tier.name, reason=f"role {job}", tokens=0)
        return tier.name

    async def _completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        body = await read_body(scope, receive, self.swapper.max_body)
        started = time.perf_counter()  # a refusal's record is timed from here
        data = json_object(body)
        _checked_output(path, data)
        model = data.get("model")
        job = ROUTED_PATHS[path]
        if model not in (None, "", "auto") or job != CHAT:
            tier = self._named(model) if model not in (None, "", "auto") else (
                self._serving_tier(job, path))
            estimate = estimate_tokens(data, self.routing_memo.for_body(body))
            extra = _tier_headers(tier, estimate)
            context = ({"asked": model, "reason": "asked by name"}
                       if model not in (None, "", "auto") else {"asked": "auto", "reason": f"role {job}"})
            refused = await self._serve_tier(scope, receive, send, _tier_request(
                tier, path, body, data, extra, context), estimate)
            if refused is not None:
                await self._refuse(scope, send, client_error(refused, path, tier), extra,
                                   RequestMeter(self.manager.bus, tier, path, context, started))
            return
        session = self._session(scope)
        try:
            decision = self._route_auto(session, data, body)
        except ApiError as error:  # the router's own refusal (e.g. too long for every tier)
            RequestMeter(self.manager.bus, "auto", path, {"asked": "auto", "reason": error.code
                         or "refused"}, started).finish(Reply.of(scope, send), error.status)
            raise
        tier = decision.tier if path in HOSTED_PATHS else self._local_rung(
            decision.tier, decision.estimated_tokens, data)
        while True:
            # llama-server ignores "model" (it answers with its alias), so the client's bytes
            # go upstream unchanged; hosted tiers read the rewritten dict.
            data["model"] = tier
            extra = _tier_headers(tier, decision.estimated_tokens)
            context = {"asked": "auto", "reason": decision.reason,
                       "estimate": decision.estimated_tokens}
            refused = await self._serve_tier(scope, receive, send, _tier_request(
                tier, path, body, data, extra, context), decision.estimated_tokens)
            if refused is None:
                return
            overflow = refused.status == 400 and any(m in refused.body for m in _CONTEXT_OVERFLOW)
            bigger = step_up(self.loaded.table, tier) if overflow else None
            if bigger is None:
                await self._refuse(scope, send, client_error(refused, path, tier), extra,
                                   RequestMeter(self.manager.bus, tier, path, context, started))
                return
            self.manager.bus.publish("context_step_up", from_tier=tier, to_tier=bigger,
                                     tokens=decision.estimated_tokens)
            if session:
                self.floors.record(session, bigger)
            tier = bigger

    async def _refuse(self, scope: Scope, send: Send, answer: Intercepted,
                      extra: Headers, meter: RequestMeter) -> None:
        """Send a held-back answer with the tier headers (an SSE error once loading began),
        metered like any answered request (timed from the request's start)."""
        await self.swapper.send_intercepted(
            scope, send, Intercepted(answer.status, answer.body, answer.headers + extra))
        meter.finish(Reply.of(scope, send), answer.status)

    async def _serve_tier(self, scope: Scope, receive: Receive, send: Send,
                          request: ModelRequest, estimate: int) -> Intercepted | None:
        """One tier (``request.model``) answers, asked for no more output than it allows
        (``estimate``: the prompt's): hosted through litellm, local through the swapper."""
        name, path = request.model, request.path
        tier = self.loaded.stack.tier(name)
        if tier is not None and tier.backend == "litellm":
            if path not in HOSTED_PATHS:
                raise ApiError(400, f"tier '{name}' is hosted; hosted tiers answer "
                                    f"{', '.join(sorted(HOSTED_PATHS))} only, not {path}",
                               "unsupported_endpoint")
            return await self._serve_hosted(scope, receive, send, replace(request, model=tier.name),
                                            estimate)
        spec = self.loaded.swapper.models.get(name)
        if spec is not None and "missing_file" in spec.metadata:
            raise ApiError(503, f"tier '{name}': {spec.metadata['missing_file']}",
                           "model_not_downloaded")
        return await self.swapper.serve_model(scope, receive, send,
                                              _capped(request, tier, estimate, encode=True))

    async def _serve_hosted(self, scope: Scope, receive: Receive, send: Send,
                            request: ModelRequest, estimate: int) -> Intercepted | None:
        """litellm answers (chat, or Anthropic Messages); a failure may fall back to the
        tier's ``fallback`` (with that tier's output limit); a context overflow the hooks
        intercept is returned for a step-up."""
        name, path = request.model, request.path
        tier = self.loaded.stack.tier(name)
        assert tier is not None and request.data is not None
        capped = _capped(request, tier, estimate, encode=False)
        data, extra, hosted = capped.data, list(capped.hooks.extra_headers), self.loaded.hosted
        assert data is not None
        meter = RequestMeter(self.manager.bus, name, path, request.context)
        reply = Reply.of(scope, send)
        session = _session_id(scope)
        if path == "/v1/messages":
            error = await _until_disconnect(scope, receive, reply, lambda out: hosted.messages(
                tier, data, out, extra))
        else:
            error = await _until_disconnect(scope, receive, reply, lambda out: hosted.chat(
                tier, data, out, extra, session))
        if error is None:
            meter.finish(reply)
            return None
        if error.status in request.hooks.intercept and error.code == CONTEXT_CODE:  # held back, not answered:
            return Intercepted(error.status, error.body(),  # the caller meters what it sends
                               [(b"content-type", b"application/json")])
        meter.finish(reply, 0 if reply.complete else error.status)
        if tier.fallback is None or (error.status < 500 and error.status != 429):
            raise error
        self.manager.bus.publish("fallback", from_tier=tier.name, to_tier=tier.fallback,
                                 error=error.message.splitlines()[0])
        request.data["model"] = tier.fallback
        return await self._serve_tier(scope, receive, send, replace(
            request, model=tier.fallback, hooks=replace(request.hooks, rewrite=TierName(tier.fallback))),
            estimate)

    def _session(self, scope: Scope) -> str:
        """The agent session id (opencode sends both headers), "" when sticky routing is off."""
        return _session_id(scope) if self.loaded.table.sticky_sessions else ""

    def _local_rung(self, chosen: str, needed: int, data: dict[str, Any]) -> str:
        """For an endpoint hosted tiers do not serve: ``chosen`` if it is local, else the
        highest local rung whose window holds the request (``needed``: its prompt's estimate;
        ``chosen`` when none does)."""
        stack, table = self.loaded.stack, self.loaded.table
        tier = stack.tier(chosen)
        if tier is None or tier.backend != "litellm":
            return chosen
        asked = requested_output(data)
        local = (r for r in reversed(table.rungs) if r is not None and r.holds(needed, asked)
                 and (t := stack.tier(r.name)) is not None and t.backend == "gguf")
        return next((r.name for r in local), chosen)

    def _route_auto(self, session: str, data: dict[str, Any], body: bytes) -> Decision:
        table = self.loaded.table
        floor = self.floors.floor(session) if session else None
        try:
            decision = classify(data, table, floor, self.routing_memo.for_body(body))
        except ContextTooLarge as exc:
            raise ApiError(400, str(exc), "context_length_exceeded",
                           {"x-llmstack-tokens": str(exc.estimated_tokens)}) from None
        except NoRoutableTier as exc:
            raise ApiError(404, f"model 'auto' cannot route: {exc}") from None
        if session:
            self.floors.record(session, decision.tier)
        self.manager.bus.publish("routed", tier=decision.tier, reason=decision.reason,
                                 tokens=decision.estimated_tokens)
        return decision

    async def _reload_quietly(self) -> None:
        """SIGHUP: reload, logging instead of answering."""
        try:
            changed = await self.reload()
            log.info("reloaded models.ini; restarted: %s", ", ".join(changed) or "nothing")
        except ApiError as error:
            log.error("%s", error.message)

    async def reload(self) -> list[str]:
        """Re-read models.ini; keep the old config (and answer 400) if the new one is invalid."""
        try:
            loaded = await asyncio.to_thread(self.loader)
            changed = self.manager.reconfigure(loaded.swapper)
            loaded.hosted.carry_over(self.loaded.hosted)
        except (ModelsIniError, ConfigError, OSError) as exc:
            self.manager.bus.publish("reload_failed", error=str(exc))
            raise ApiError(400, f"models.ini not reloaded, old config kept:\n{exc}",
                           "invalid_config") from None
        self.loaded = loaded
        self.floors = SessionFloors()
        return changed
