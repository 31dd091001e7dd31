"""The llmstack ASGI app: router endpoints composed over the swapper, in one process.

A request flows app -> (auto? classify) -> tier -> ``manager.lease(tier)`` ->
proxy stream back, with no second HTTP hop. Reload (POST /reload or SIGHUP)
re-reads models.ini: unchanged tiers keep running, in-flight streams finish,
and an invalid file keeps the old config and reports its file:line errors.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapper.config import ConfigError, SwapperConfig
from swapper.errors import ApiError
from swapper.http_app import (
    DisconnectWatch, Receive, Scope, SwapperApp, header, json_object, model_from_body, read_body,
    send_bytes, send_json,
)
from swapper.manager import Manager
from swapper.observe import RequestMeter
from swapper.proxy import Headers, Intercepted, Send

from .config import ModelsIniError, Stack
from .hosted import CONTEXT_CODE, HostedTiers
from .routing import (
    ContextTooLarge, Decision, NoRoutableTier, RoutingTable, SessionFloors, classify, step_up,
)

log = logging.getLogger("llmstack")
_TOO_LONG_STATUS = frozenset({400})
# a too-long prompt: llama-server's error type, and the code hosted tiers answer with
_CONTEXT_OVERFLOW = (b"exceed_context_size", CONTEXT_CODE.encode())
AUTO_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
SESSION_HEADERS = (b"x-session-affinity", b"x-session-id")


@dataclass(frozen=True)
class Loaded:
    """One consistent generation of configuration."""

    stack: Stack
    table: RoutingTable
    swapper: SwapperConfig
    hosted: HostedTiers = field(default_factory=HostedTiers)
    """The tiers litellm serves (hosted, multi-machine)."""


Loader = Callable[[], Loaded]


class TierName:
    """Response hook: the tier's name on the first streamed delta and on the message."""

    def __init__(self, tier: str) -> None:
        self.tier = tier

    def event(self, data: dict[str, Any]) -> bool:
        choices = data.get("choices")
        if choices and isinstance(choices[0], dict) and isinstance(choices[0].get("delta"), dict):
            choices[0]["delta"]["name"] = self.tier
            return True
        return False

    def body(self, data: dict[str, Any]) -> None:
        choices = data.get("choices")
        if choices and isinstance(choices[0], dict) and isinstance(choices[0].get("message"), dict):
            choices[0]["message"]["name"] = self.tier


async def _until_disconnect(receive: Receive, send: Send,
                            answer: Callable[[Send], Awaitable[None]]) -> ApiError | None:
    """Run ``answer`` (a litellm-served reply), cancelled if the client leaves first, so a
    hosted provider stops generating (and billing); its ApiError is returned, not raised."""
    watch = DisconnectWatch(receive, send)
    try:
        await answer(watch.send)
    except ApiError as error:
        return error
    except asyncio.CancelledError:
        if not watch.disconnected:
            raise
    finally:
        watch.close()
    return None


class LLMStackApp:
    """One ASGI app: /models.ini, /v1/models with ``auto``, auto routing, reload, and the swapper."""

    def __init__(self, loader: Loader, models_ini: Path | None, swapper: SwapperApp,
                 loaded: Loaded) -> None:
        self.loader = loader
        self.models_ini = models_ini
        self.swapper = swapper
        self.loaded = loaded
        self.floors = SessionFloors()
        self.shutdown_hooks: list[Callable[[], None]] = []
        """Run after the models are stopped (uvicorn re-raises SIGTERM, so no finally runs)."""

    @property
    def manager(self) -> Manager:
        return self.swapper.manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self.swapper.serve_http(scope, receive, send, self._route)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.swapper.startup()
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_quietly()))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                loop.remove_signal_handler(signal.SIGHUP)
                await self.swapper.shutdown()
                for hook in self.shutdown_hooks:
                    hook()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if method == "POST" and path in AUTO_PATHS:
            await self._completion(scope, receive, send, path)
        elif method == "POST" and path == "/v1/messages":
            await self._messages(scope, receive, send, path)
        elif method == "GET" and path in ("/v1/models", "/models"):
            rows = self.model_list()
            await self._add_backend_health(rows)
            await send_json(send, 200, {"object": "list", "data": rows})
        elif method == "GET" and path == "/models.ini":
            await self._models_ini(send)
        elif method == "POST" and path == "/reload":
            changed = await self.reload()
            await send_json(send, 200, {"reloaded": True, "restarted": changed})
        else:
            await self.swapper.route(scope, receive, send)

    async def _models_ini(self, send: Send) -> None:
        if self.models_ini is None or not self.models_ini.exists():
            raise ApiError(404, "no models.ini: llmstack is serving the built-in demo stack "
                                "(set LLMSTACK_MODELS_INI or pass --models-ini)")
        await send_bytes(send, 200, self.models_ini.read_bytes(), "text/plain; charset=utf-8")

    async def _messages(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """Anthropic Messages: litellm answers for its tiers, llama-server for local ones."""
        body = await read_body(scope, receive, self.swapper.max_body)
        model, data = model_from_body(body, header(scope, b"content-type"))
        tier = self.loaded.stack.tier(model)
        if tier is not None and tier.backend == "litellm" and data is not None:
            error = await _until_disconnect(receive, send, lambda out: self.loaded.hosted.messages(
                tier, data, out, [(b"x-llmstack-tier", tier.name.encode())]))
            if error is not None:
                raise error
            return
        await self.swapper.serve_model(scope, receive, send, model, body, path, data=data)

    async def _add_backend_health(self, rows: list[dict[str, Any]]) -> None:
        """Multi-machine tiers' rows list each backend's health."""
        hosted = self.loaded.hosted
        health = dict(zip(hosted.backends, await asyncio.gather(
            *(b.health() for b in hosted.backends.values()))))
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
            "description": (f"<= {table.high_fidelity_ceiling} tokens -> {table.rung_name(2)} or "
                            f"{table.rung_name(1)}; <= {table.mid_fidelity_ceiling} -> "
                            f"{table.rung_name(1)}; >= {table.multi_turn} user turns -> "
                            f"{table.rung_name(1)}; else {table.rung_name(0)}. "
                            "[ultra] or [opus] forces the ultra tier."),
        }]
        for tier in self.loaded.stack.tiers:
            base = {"object": "model", "created": 0, "owned_by": "llmstack", "tier": tier.name,
                    "role": tier.role, "backend": tier.backend, "context_length": tier.ctx_size,
                    **({"hosted_model": tier.model} if tier.backend == "litellm" else {})}
            rows.append({"id": tier.name, "name": tier.description or tier.name, **base})
            rows += [{"id": alias, "name": f"{tier.description or tier.name} (alias of {tier.name})",
                      **base} for alias in tier.effective_aliases]
        return rows

    async def _completion(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        body = await read_body(scope, receive, self.swapper.max_body)
        data = json_object(body)
        model = data.get("model")
        if model not in (None, "", "auto"):
            if not isinstance(model, str):
                raise ApiError(400, "'model' must be a string")
            found = self.loaded.stack.tier(model)
            tier = found.name if found else model
            self.manager.bus.publish("named", tier=tier, model=model)
            await self._serve_tier(scope, receive, send, path, tier, body, data,
                                   context={"asked": model, "reason": "asked by name"})
            return
        session = self._session(scope)
        decision = self._route_auto(session, data)
        tier = decision.tier
        while True:
            # llama-server ignores "model" (it answers with its alias), so the client's bytes
            # go upstream unchanged; hosted tiers read the rewritten dict.
            data["model"] = tier
            extra = [(b"x-llmstack-tokens", str(decision.estimated_tokens).encode()),
                     (b"x-llmstack-tier", tier.encode())]
            refused = await self._serve_tier(scope, receive, send, path, tier, body, data,
                                             extra, intercept=_TOO_LONG_STATUS, context={
                                                 "asked": "auto", "reason": decision.reason,
                                                 "estimate": decision.estimated_tokens})
            if refused is None:
                return
            overflow = any(marker in refused.body for marker in _CONTEXT_OVERFLOW)
            bigger = step_up(self.loaded.table, tier) if overflow else None
            if bigger is None:
                await self.swapper.send_intercepted(scope, send, refused)
                return
            self.manager.bus.publish("context_step_up", from_tier=tier, to_tier=bigger,
                                     tokens=decision.estimated_tokens)
            if session:
                self.floors.record(session, bigger)
            tier = bigger

    async def _serve_tier(self, scope: Scope, receive: Receive, send: Send, path: str, name: str,
                          body: bytes, data: dict[str, Any],
                          extra: Iterable[tuple[bytes, bytes]] = (),
                          intercept: frozenset[int] = frozenset(),
                          context: dict[str, Any] | None = None) -> Intercepted | None:
        """One tier answers: hosted through litellm, local through the swapper."""
        tier = self.loaded.stack.tier(name)
        if tier is not None and tier.backend == "litellm":
            meter = RequestMeter(self.manager.bus, send, name, path, context)
            session = next((header(scope, h) for h in SESSION_HEADERS if header(scope, h)), "")
            error = await _until_disconnect(receive, meter.send, lambda out: self.loaded.hosted.chat(
                tier, data, out, list(extra), session))
            if error is None:
                return None
            meter.finish(error.status)
            if error.status in intercept and error.code == CONTEXT_CODE:
                return Intercepted(error.status, error.body(),
                                   [(b"content-type", b"application/json"), *extra])
            if tier.fallback is None or (error.status < 500 and error.status != 429):
                raise error
            self.manager.bus.publish("fallback", from_tier=tier.name, to_tier=tier.fallback,
                                     error=error.message.splitlines()[0])
            data["model"] = tier.fallback
            return await self._serve_tier(scope, receive, send, path, tier.fallback, body,
                                          data, extra, intercept, context)
        spec = self.loaded.swapper.models.get(name)
        if spec is not None and "missing_file" in spec.metadata:
            repo, file = spec.metadata["missing_file"]
            raise ApiError(503, f"tier '{name}': {repo}/{file} is not downloaded; "
                                f"run: llmstack download {name}",
                           "model_not_downloaded")
        return await self.swapper.serve_model(scope, receive, send, name, body, path,
                                              TierName(name), extra, data, intercept, context)

    def _session(self, scope: Scope) -> str:
        """The agent session id (opencode sends both headers), "" when sticky routing is off."""
        if not self.loaded.table.sticky_sessions:
            return ""
        return next((header(scope, h) for h in SESSION_HEADERS if header(scope, h)), "")

    def _route_auto(self, session: str, data: dict[str, Any]) -> Decision:
        table = self.loaded.table
        floor = self.floors.floor(session) if session else None
        try:
            decision = classify(data, table, floor)
        except ContextTooLarge as exc:
            raise ApiError(400, str(exc), "context_length_exceeded") from None
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
