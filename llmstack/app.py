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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swapper.config import ConfigError, SwapperConfig
from swapper.errors import ApiError
from swapper.http_app import (
    Receive, Scope, SwapperApp, header, json_object, read_body, send_bytes, send_json,
)
from swapper.manager import Manager
from swapper.proxy import Intercepted, Send

from .config import ModelsIniError, Stack
from .hosted import serve_hosted
from .routing import (
    ContextTooLarge, Decision, NoRoutableTier, RoutingTable, SessionFloors, classify, step_up,
)
from .routing_memo import RoutingMemo

log = logging.getLogger("llmstack")
_TOO_LONG_STATUS = frozenset({400})
_CONTEXT_OVERFLOW = b"exceed_context_size"  # llama-server's error type for a too-long prompt
AUTO_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
SESSION_HEADERS = (b"x-session-affinity", b"x-session-id")


@dataclass(frozen=True)
class Loaded:
    """One consistent generation of configuration."""

    stack: Stack
    table: RoutingTable
    swapper: SwapperConfig


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


async def _send_intercepted(send: Send, answer: Intercepted) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


class LLMStackApp:
    """One ASGI app: /models.ini, /v1/models with ``auto``, auto routing, reload, and the swapper."""

    def __init__(self, loader: Loader, models_ini: Path | None, swapper: SwapperApp,
                 loaded: Loaded) -> None:
        self.loader = loader
        self.models_ini = models_ini
        self.swapper = swapper
        self.loaded = loaded
        self.floors = SessionFloors()
        self.routing_memo = RoutingMemo()
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
        elif method == "GET" and path in ("/v1/models", "/models"):
            await send_json(send, 200, {"object": "list", "data": self.model_list()})
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
                    "role": tier.role, "backend": tier.backend, "context_length": tier.ctx_size}
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
            await self._serve_tier(scope, receive, send, path, tier, body, data)
            return
        session = self._session(scope)
        decision = self._route_auto(session, data, body)
        tier = decision.tier
        while True:
            # llama-server ignores "model" (it answers with its alias), so the client's bytes
            # go upstream unchanged; hosted tiers read the rewritten dict.
            data["model"] = tier
            extra = [(b"x-llmstack-tokens", str(decision.estimated_tokens).encode()),
                     (b"x-llmstack-tier", tier.encode())]
            refused = await self._serve_tier(scope, receive, send, path, tier, body, data,
                                             extra, intercept=_TOO_LONG_STATUS)
            if refused is None:
                return
            bigger = step_up(self.loaded.table, tier) if _CONTEXT_OVERFLOW in refused.body else None
            if bigger is None:
                await _send_intercepted(send, refused)
                return
            self.manager.bus.publish("context_step_up", from_tier=tier, to_tier=bigger,
                                     tokens=decision.estimated_tokens)
            if session:
                self.floors.record(session, bigger)
            tier = bigger

    async def _serve_tier(self, scope: Scope, receive: Receive, send: Send, path: str, name: str,
                          body: bytes, data: dict[str, Any], extra: Iterable[tuple[bytes, bytes]] = (),
                          intercept: frozenset[int] = frozenset()) -> Intercepted | None:
        """One tier answers: hosted through litellm, local through the swapper."""
        tier = self.loaded.stack.tier(name)
        if tier is not None and tier.backend == "litellm":
            await serve_hosted(tier, data, send, list(extra))
            return None
        spec = self.loaded.swapper.models.get(name)
        if spec is not None and "missing_file" in spec.metadata:
            repo, file = spec.metadata["missing_file"]
            raise ApiError(503, f"tier '{name}': {repo}/{file} is not downloaded; "
                                f"run: llmstack download {name}",
                           "model_not_downloaded")
        return await self.swapper.serve_model(scope, receive, send, name, body, path,
                                              TierName(name), extra, data, intercept)

    def _session(self, scope: Scope) -> str:
        """The agent session id (opencode sends both headers), "" when sticky routing is off."""
        if not self.loaded.table.sticky_sessions:
            return ""
        return next((header(scope, h) for h in SESSION_HEADERS if header(scope, h)), "")

    def _route_auto(self, session: str, data: dict[str, Any], body: bytes) -> Decision:
        table = self.loaded.table
        floor = self.floors.floor(session) if session else None
        try:
            decision = classify(data, table, floor, self.routing_memo.for_body(body))
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
        except (ModelsIniError, ConfigError, OSError) as exc:
            self.manager.bus.publish("reload_failed", error=str(exc))
            raise ApiError(400, f"models.ini not reloaded, old config kept:\n{exc}",
                           "invalid_config") from None
        self.loaded = loaded
        self.floors = SessionFloors()
        return changed
