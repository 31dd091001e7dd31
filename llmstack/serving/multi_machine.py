"""Tiers that span machines: ``backends = http://a:10101, http://b:10101`` on litellm's Router.

Each backend is another ``llmstack serve`` (or any OpenAI-compatible server)
answering the tier's name (``model = openai/<name>`` unless models.ini sets
another). One Router per tier, made on its first request, spreads requests by
the least-busy strategy (fewest requests in flight, ties broken at random),
retries a request a backend refused or failed on another backend (each tried once;
never after a timeout: a response timeout spent the request's time, and litellm's
retry policy cannot tell a connect timeout from it), cools a failing backend down at
its first failure, and pins a session id (opencode's ``x-session-id``) to one backend so its
KV cache is reused. When no backend answers, the request is a 503 naming them, with
``Retry-After``. The Router's state is per process. The backends' API key:
``api_key`` in the user's litellm_config.yaml entry for the tier, else
``$LLMSTACK_BACKENDS_API_KEY``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

from swapper.errors import ApiError, unavailable
from swapper.types import Headers

from ..config.schema import Tier

log = logging.getLogger("llmstack")
ROUTING_STRATEGY = "least-busy"
ALLOWED_FAILS = 0
"""Failures within a minute a backend may have beyond which it is cooled down: none."""
COOLDOWN_SECONDS = 30
NO_RETRY_AFTER_TIMEOUT = {"TimeoutErrorRetries": 0}
"""litellm RetryPolicy: a timed-out attempt used the request's time up."""
HEALTH_TIMEOUT = 1.0
BACKEND_HEADER = b"x-llmstack-backend"


class Backends:
    """The backends of one tier and, once used, the Router spreading requests over them."""

    def __init__(self, tier: Tier, params: dict[str, Any], fallback_key: str | None = None) -> None:
        self.tier = tier
        self.params = params
        self.fallback_key = fallback_key
        """``$LLMSTACK_BACKENDS_API_KEY``, for when the user's litellm_config.yaml gives none."""
        self._router: Any = None

    @property
    def api_key(self) -> str:
        return str(self.params.get("api_key") or self.fallback_key or "none")

    def deployments(self) -> list[dict[str, Any]]:
        """litellm model_list: one deployment per backend, its id the backend URL."""
        common = {k: v for k, v in self.params.items() if k not in ("model", "api_base", "api_key")}
        return [{"model_name": self.tier.name,
                 "litellm_params": {**common, "model": self.params["model"],
                                    "api_base": f"{url}/v1", "api_key": self.api_key},
                 "model_info": {"id": url}} for url in self.tier.backends]

    def router(self, litellm: ModuleType) -> Any:
        """The tier's Router: every backend tried at most once per request (a refusal or a
        failure cools it down at once, so the retry goes elsewhere), none after a timeout."""
        if self._router is None:
            self._router = litellm.Router(
                model_list=self.deployments(), routing_strategy=ROUTING_STRATEGY,
                num_retries=len(self.tier.backends) - 1, retry_policy=NO_RETRY_AFTER_TIMEOUT,
                allowed_fails=ALLOWED_FAILS, cooldown_time=COOLDOWN_SECONDS,
                optional_pre_call_checks=["session_affinity"])
            _break_ties_at_random(self._router)
        return self._router

    def call(self, litellm: ModuleType, endpoint: str) -> Callable[..., Awaitable[Any]]:
        router = self.router(litellm)
        call: Callable[..., Awaitable[Any]] = (router.acompletion if endpoint == "chat"
                                               else router.aanthropic_messages)
        return call

    def unanswered(self, exc: Exception) -> ApiError | None:
        """503 naming the backends when none answers: every one refused a connection or is
        cooling down after a failure; None for any other error."""
        if not (getattr(exc, "all_deployments_in_cooldown", False) is True or refused(exc)):
            return None
        return unavailable(f"tier '{self.tier.name}': no backend answers (each refused a "
                           f"connection or is cooling down after a failure): "
                           f"{', '.join(self.tier.backends)}", COOLDOWN_SECONDS,
                           "backends_unavailable")

    def answered_by(self, result: Any) -> Headers:
        """``x-llmstack-backend: <url>`` naming the machine that answered."""
        hidden = getattr(result, "_hidden_params", None) or {}
        url = hidden.get("model_id") if isinstance(hidden, dict) else None
        return [(BACKEND_HEADER, url.encode())] if url in self.tier.backends else []

    async def health(self) -> list[dict[str, Any]]:
        """Each backend: its URL and whether ``GET /v1/models`` answers 200 within a second."""
        import httpx

        headers = {"authorization": f"Bearer {self.api_key}"}
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT, headers=headers) as client:
            async def probe(url: str) -> dict[str, Any]:
                try:
                    response = await client.get(f"{url}/v1/models")
                except httpx.HTTPError as exc:
                    return {"url": url, "healthy": False, "error": str(exc) or type(exc).__name__}
                ok = response.status_code == 200
                return {"url": url, "healthy": ok,
                        **({} if ok else {"error": f"HTTP {response.status_code}"})}
            return list(await asyncio.gather(*(probe(url) for url in self.tier.backends)))


_REFUSALS = frozenset({"ConnectError", "ClientConnectorError"})
"""httpx's and aiohttp's 'cannot connect' (litellm's transports), which litellm reports as an
InternalServerError."""


def refused(exc: BaseException) -> bool:
    """Whether the connection itself failed (refused, unreachable), by the cause chain."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ConnectionRefusedError) or type(cause).__name__ in _REFUSALS:
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _break_ties_at_random(router: Any) -> None:
    """Make least-busy pick at random among equally busy backends.

    litellm's least-busy takes the first of the least busy candidates in model-list
    order, so idle backends are not shared (300 requests from 6 clients over 3 idle
    backends went 213 / 61 / 26). Its selector (the Router's ``leastbusy_logger``) is
    given the candidates in a fresh random order each time instead.
    """
    selector: Any = getattr(router, "leastbusy_logger", None)
    pick = getattr(selector, "async_get_available_deployments", None)
    if pick is None:
        log.warning("litellm's least-busy selector not found: ties go to the first backend")
        return

    async def shuffled(model_group: str, healthy_deployments: list[Any], *args: Any,
                       **kwargs: Any) -> Any:
        return await pick(model_group, random.sample(healthy_deployments,
                                                     len(healthy_deployments)), *args, **kwargs)

    selector.async_get_available_deployments = shuffled
