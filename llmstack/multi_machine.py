"""Tiers that span machines: ``backends = http://a:10101, http://b:10101`` on litellm's Router.

Each backend is another ``llmstack serve`` (or any OpenAI-compatible server)
answering the tier's name (``model = openai/<name>`` unless models.ini sets
another). One Router per tier, made on its first request, spreads requests by
the least-busy strategy (fewest requests in flight), retries a failed request on
another backend, cools a failing backend down, and pins a session id (opencode's
``x-session-id``) to one backend so its KV cache is reused. The Router's state is
per process. The backends' API key: ``api_key`` in the user's litellm_config.yaml
entry for the tier, else ``$LLMSTACK_BACKENDS_API_KEY``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

from swapper.proxy import Headers

from .config import Tier

ROUTING_STRATEGY = "least-busy"
NUM_RETRIES = 2
ALLOWED_FAILS = 1
"""Failures within a minute before a backend is cooled down."""
COOLDOWN_SECONDS = 30.0
BACKENDS_KEY_ENV = "LLMSTACK_BACKENDS_API_KEY"
HEALTH_TIMEOUT = 1.0
BACKEND_HEADER = b"x-llmstack-backend"


class Backends:
    """The backends of one tier and, once used, the Router spreading requests over them."""

    def __init__(self, tier: Tier, params: dict[str, Any]) -> None:
        self.tier = tier
        self.params = params
        self._router: Any = None

    @property
    def api_key(self) -> str:
        return str(self.params.get("api_key") or os.environ.get(BACKENDS_KEY_ENV) or "none")

    def deployments(self) -> list[dict[str, Any]]:
        """litellm model_list: one deployment per backend, its id the backend URL."""
        common = {k: v for k, v in self.params.items() if k not in ("model", "api_base", "api_key")}
        return [{"model_name": self.tier.name,
                 "litellm_params": {**common, "model": self.params["model"],
                                    "api_base": f"{url}/v1", "api_key": self.api_key},
                 "model_info": {"id": url}} for url in self.tier.backends]

    def router(self, litellm: ModuleType) -> Any:
        if self._router is None:
            self._router = litellm.Router(
                model_list=self.deployments(), routing_strategy=ROUTING_STRATEGY,
                num_retries=NUM_RETRIES, allowed_fails=ALLOWED_FAILS,
                cooldown_time=COOLDOWN_SECONDS,
                optional_pre_call_checks=["session_affinity"])
        return self._router

    def call(self, litellm: ModuleType, endpoint: str) -> Callable[..., Awaitable[Any]]:
        router = self.router(litellm)
        call: Callable[..., Awaitable[Any]] = (router.acompletion if endpoint == "chat"
                                               else router.aanthropic_messages)
        return call

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
