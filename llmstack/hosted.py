"""Hosted tiers (Anthropic, OpenAI, Bedrock, ...) served in process through litellm.

litellm is optional (``pip install 'llmstack[hosted]'``) and imported on the first
hosted request only: it costs seconds and ~200 MB. Credentials come from the
environment as litellm reads them (ANTHROPIC_API_KEY, AWS profiles, ...), never
from models.ini. A tier's sampler is added to the request without overriding
what the caller set.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
from types import ModuleType
from typing import Any

from swapper.errors import ApiError, sse_error_event
from swapper.proxy import Headers, Send

from .config import Tier

SAMPLER_PARAMS = {"temp": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                  "rep_pen": "repetition_penalty"}
_PASSTHROUGH_STATUS = {400, 401, 403, 404, 413, 429, 502, 503, 504}


def litellm_installed() -> bool:
    return importlib.util.find_spec("litellm") is not None


async def _litellm() -> ModuleType:
    """litellm, imported once in a worker thread: its 3-5 s import must not stall the loop."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map fetch at import
    return await asyncio.to_thread(importlib.import_module, "litellm")


def request_params(tier: Tier, data: dict[str, Any]) -> dict[str, Any]:
    """litellm kwargs: the caller's body, the tier's model, samplers the caller left unset."""
    params = {k: v for k, v in data.items() if k != "model"}
    for name, value in tier.sampler:
        params.setdefault(SAMPLER_PARAMS[name], value)
    params["model"] = tier.model
    return params


def _api_error(exc: Exception) -> ApiError:
    status = getattr(exc, "status_code", 502)
    status = status if status in _PASSTHROUGH_STATUS else 502
    return ApiError(status, f"hosted tier failed: {exc}", "hosted_error")


async def serve_hosted(tier: Tier, data: dict[str, Any], send: Send, extra: Headers) -> None:
    """Answer one chat request from a hosted tier, streamed or not, named after the tier."""
    if not litellm_installed():
        raise ApiError(503, f"tier '{tier.name}' is hosted ({tier.model}) but litellm is not "
                            "installed: pip install 'llmstack[hosted]'", "hosted_unavailable")
    litellm = await _litellm()
    try:
        result = await litellm.acompletion(**request_params(tier, data))
    except Exception as exc:  # litellm raises its own hierarchy; map by status
        raise _api_error(exc) from exc
    if not data.get("stream"):
        body = result.model_dump()
        if body.get("choices"):
            body["choices"][0].setdefault("message", {})["name"] = tier.name
        raw = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(raw)).encode()), *extra]})
        await send({"type": "http.response.body", "body": raw, "more_body": False})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"x-accel-buffering", b"no"),
                            *extra]})
    named = False
    try:
        async for chunk in result:
            event = chunk.model_dump(exclude_none=True)
            if not named and event.get("choices"):
                event["choices"][0].setdefault("delta", {})["name"] = tier.name
                named = True
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + json.dumps(event).encode() + b"\n\n"})
        tail = b"data: [DONE]\n\n"
    except Exception as exc:  # never end a failed stream cleanly
        tail = sse_error_event(f"hosted tier failed mid-stream: {exc}")
    await send({"type": "http.response.body", "body": tail, "more_body": False})
