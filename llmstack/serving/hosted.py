"""Tiers served in process through litellm: hosted providers and tiers on other machines.

litellm is optional (``pip install 'llmstack[hosted]'``) and imported on the first
request to such a tier only (in a worker thread: it costs seconds and ~200 MB).
Credentials come from the environment as litellm reads them (ANTHROPIC_API_KEY,
OPENAI_API_KEY, AWS profiles, ...) or from the user's litellm_config.yaml, never
from models.ini. Per request: the tier's sampler fills in what the caller left
unset, the output limit arrives clamped to the tier's (the app applies
:mod:`llmstack.serving.output_cap`), streams carry the usage chunk, and
a provider failure is an OpenAI-style error with the provider's status and type;
a stream that breaks off ends with an in-band error event, never a clean stop.
Time limits (``remote_limits``): no answer (or stream start) within
``response_timeout`` is a 504 ``timeout_error``; a stream chunk that takes longer
than ``idle_timeout`` ends the stream with the protocol's error event.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from swapper.config import Timeouts
from swapper.errors import ApiError
from swapper.stream_protocols import ANTHROPIC, OPENAI, StreamProtocol
from swapper.types import Headers, Send

from ..config.litellm_config import UserParams, stack_params
from ..config.schema import Stack, Tier
from .multi_machine import Backends
from .protocols import CONTEXT_CODE
from .remote_limits import GRACE, litellm_timeouts, remote_timeouts

SAMPLER_PARAMS = {"temp": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                  "rep_pen": "repetition_penalty"}
ANTHROPIC_SAMPLERS = ("temperature", "top_p", "top_k")
"""The samplers the Anthropic Messages API has."""
CHAT_FIELDS = frozenset({
    "messages", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs",
    "top_logprobs", "max_tokens", "max_completion_tokens", "n", "stop", "stream",
    "stream_options", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed",
    "response_format", "tools", "tool_choice", "parallel_tool_calls", "functions",
    "function_call", "user", "reasoning_effort", "modalities", "audio", "prediction",
    "verbosity", "web_search_options",
})
"""The Chat Completions request fields passed on to litellm. Anything else in a caller's body
is dropped: litellm reads its own keyword arguments from the same place (``api_base``,
``api_key``, ``headers``, ``custom_llm_provider``, ``metadata``...), and a caller must never
choose where a tier's request (and its credentials) go."""
MESSAGES_FIELDS = frozenset({
    "messages", "system", "max_tokens", "stop_sequences", "stream", "temperature", "top_p",
    "top_k", "tools", "tool_choice", "thinking",
})
"""The Anthropic Messages request fields passed on; the rest is dropped (see CHAT_FIELDS)."""
TIMEOUT_CODE = "upstream_timeout"
"""A local tier's code for the same failure."""
Call = Callable[..., Awaitable[Any]]
_CLASS_TYPES = {"ContextWindowExceededError": "invalid_request_error",
                "BadRequestError": "invalid_request_error",
                "AuthenticationError": "authentication_error",
                "PermissionDeniedError": "permission_error", "NotFoundError": "not_found_error",
                "RateLimitError": "rate_limit_error"}


_CONTEXT_OVERFLOW = re.compile(
    r"context.{0,10}(length|window|size)|prompt is too long|too many tokens", re.IGNORECASE)


def litellm_installed() -> bool:
    return importlib.util.find_spec("litellm") is not None


_loaded: dict[str, Any] = {}
"""What :func:`load_litellm` and :func:`_messages_adapter` imported (by name), kept so that
later requests take no thread hop."""


async def load_litellm() -> ModuleType:
    """litellm, imported once in a worker thread: its 3-5 s import must not stall the loop
    (``serve`` has told it not to fetch a cost map: :func:`llmstack.settings.prepare_for_litellm`)."""
    if "litellm" not in _loaded:
        if not litellm_installed():
            raise ApiError(503, "this tier is served through litellm, which is not installed: "
                                "pip install 'llmstack[hosted]'", "hosted_unavailable")
        litellm: Any = await asyncio.to_thread(importlib.import_module, "litellm")
        # Messages to OpenAI-compatible servers (llama-server, other llmstacks) as chat
        # completions, which they all speak, not as the Responses API
        litellm.use_chat_completions_url_for_anthropic_messages = True
        _loaded["litellm"] = litellm
    module: ModuleType = _loaded["litellm"]
    return module


async def _messages_adapter() -> Call:
    """litellm's Anthropic-Messages-over-chat-completions adapter, for any provider
    (imported once, in a worker thread).

    litellm's native Anthropic Messages stream imports its proxy package (fastapi,
    orjson, soundfile, ...), which ``litellm`` alone does not install; the adapter
    goes through ``acompletion`` like chat requests do and yields Anthropic SSE.
    """
    if "adapter" not in _loaded:
        module = await asyncio.to_thread(
            importlib.import_module, "litellm.llms.anthropic.messages.adapters.handler")
        handler = module.LiteLLMMessagesToCompletionTransformationHandler
        _loaded["adapter"] = handler.async_anthropic_messages_handler
    call: Call = _loaded["adapter"]
    return call


@dataclass
class ProviderError(ApiError):
    """An error a provider answered, with its own ``type`` kept."""

    provider_type: str = ""

    @property
    def type(self) -> str:
        return self.provider_type or super().type


def provider_error(exc: Exception, tier: str) -> ProviderError:
    """litellm's exception as the provider's status and type; context overflows recognisable;
    litellm's timeout (a 408 of its own: no answer in time) a 504 as a local tier's."""
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) and 400 <= status <= 599 else 502
    if _timed_out(exc):  # its first line: what timed out after how long (then debug details)
        return ProviderError(504, f"tier '{tier}': {str(exc).splitlines()[0]}", TIMEOUT_CODE)
    name = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in _CLASS_TYPES), "")
    # litellm recognises most overflows itself; not every provider path (Anthropic streams)
    context = name == "ContextWindowExceededError" or (status == 400 and bool(
        _CONTEXT_OVERFLOW.search(str(exc))))
    return ProviderError(status, f"tier '{tier}': {exc}", CONTEXT_CODE if context else "",
                         provider_type=_provider_type(exc) or _CLASS_TYPES.get(name, ""))


def _timed_out(exc: Exception) -> bool:
    """litellm's ``Timeout``: no answer (or no next chunk) within its limit."""
    return any(c.__name__ == "Timeout" for c in type(exc).__mro__)


def _provider_type(exc: Exception) -> str:
    """``error.type`` from the provider's own error body, when litellm kept it."""
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        try:
            response: Any = getattr(exc, "response", None)
            body = response.json()
        except Exception:  # no response, or not JSON
            return ""
    error = body.get("error", body) if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) and kind != "error" else ""


def chat_params(tier: Tier, base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """litellm kwargs: the caller's CHAT_FIELDS, the tier's model and credentials, samplers
    left unset."""
    params = {k: v for k, v in data.items() if k in CHAT_FIELDS}
    for name, value in tier.sampler:
        params.setdefault(SAMPLER_PARAMS[name], value)
    if params.get("stream") and "stream_options" not in params:
        params["stream_options"] = {"include_usage": True}
    return {"drop_params": True, **params, **base}


def messages_params(tier: Tier, base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Anthropic Messages kwargs: like chat_params (MESSAGES_FIELDS), with the samplers that
    API has."""
    params = {k: v for k, v in data.items() if k in MESSAGES_FIELDS}
    for name, value in tier.sampler:
        if SAMPLER_PARAMS[name] in ANTHROPIC_SAMPLERS:
            params.setdefault(SAMPLER_PARAMS[name], int(value) if name == "top_k" else value)
    return {**params, **base}


async def _start(send: Send, content_type: bytes, extra: Headers) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), *extra]})


async def _send_json(send: Send, payload: dict[str, Any], extra: Headers) -> None:
    raw = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(raw)).encode()), *extra]})
    await send({"type": "http.response.body", "body": raw, "more_body": False})


async def _close(chunks: AsyncIterator[Any]) -> None:
    """Close a provider stream now (also when cancelled): the provider stops generating."""
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await asyncio.shield(close())


_END = object()


async def _next(chunks: AsyncIterator[Any], idle: float) -> Any:
    """The stream's next chunk, ``_END`` after the last; asyncio.TimeoutError when it takes
    longer than ``idle`` seconds (0: no limit)."""
    try:
        return await asyncio.wait_for(chunks.__anext__(), idle or None)
    except StopAsyncIteration:
        return _END


class _Chunks:
    """How one protocol's stream is sent on: each chunk's bytes, and whether it is complete."""

    protocol: StreamProtocol
    final = ""
    """The event that completes the stream (named in the error when it never comes)."""
    done = b""
    """What follows the last chunk of a complete stream."""

    def __init__(self, tier: str) -> None:
        self.tier = tier
        self.complete = False

    def encode(self, chunk: Any) -> bytes:
        raise NotImplementedError


class _ChatChunks(_Chunks):
    """OpenAI SSE chunks, the first named after the tier; ``[DONE]`` only after a finish_reason."""

    protocol = OPENAI
    final = "a finish_reason"
    done = b"data: [DONE]\n\n"

    def __init__(self, tier: str) -> None:
        super().__init__(tier)
        self.named = False

    def encode(self, chunk: Any) -> bytes:
        event = chunk.model_dump(exclude_none=True)
        choices = event.get("choices") or []
        if not self.named and choices:
            choices[0].setdefault("delta", {})["name"] = self.tier
            self.named = True
        self.complete = self.complete or any(c.get("finish_reason") for c in choices)
        return b"data: " + json.dumps(event).encode() + b"\n\n"


class _MessagesChunks(_Chunks):
    """Anthropic SSE as litellm yields it, complete by ``message_stop`` (or litellm's own
    error event)."""

    protocol = ANTHROPIC
    final = "message_stop"

    def encode(self, chunk: Any) -> bytes:
        raw = chunk if isinstance(chunk, bytes) else str(chunk).encode()
        self.complete = self.complete or raw.startswith((b"event: message_stop", b"event: error"))
        return raw


async def _relay(chunks: AsyncIterator[Any], out: _Chunks, idle: float, send: Send) -> None:
    """Send a provider stream on. One that fails, stalls longer than ``idle`` seconds
    between chunks or ends before its final event ends with the protocol's error event,
    never cleanly; the provider stream is closed either way."""
    try:
        while (chunk := await _next(chunks, idle)) is not _END:
            await send({"type": "http.response.body", "body": out.encode(chunk),
                        "more_body": True})
        tail = out.done if out.complete else out.protocol.error_event(
            f"tier '{out.tier}': the provider's stream ended before {out.final}", "stream_cut")
    except Exception as exc:  # never end a failed stream cleanly
        tail = out.protocol.error_event(*_stream_failure(exc, out.tier, idle))
    finally:
        await _close(chunks)
    await send({"type": "http.response.body", "body": tail, "more_body": False})


def _stream_failure(exc: Exception, tier: str, idle: float) -> tuple[str, str]:
    """The message and code of the error event ending a stream that failed."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"tier '{tier}': no stream chunk within idle_timeout ({idle:g} s)", TIMEOUT_CODE
    return f"tier '{tier}' failed mid-stream: {exc}", TIMEOUT_CODE if _timed_out(exc) else (
        "stream_cut")


@dataclass
class HostedTiers:
    """The litellm-served tiers of one configuration generation."""

    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per tier: model, api_base and the user's litellm_params (credentials), merged."""
    backends: dict[str, Backends] = field(default_factory=dict)
    """Multi-machine tiers: their Router, made on first use."""
    limits: dict[str, Timeouts] = field(default_factory=dict)
    """Per tier: its connect, response and idle timeouts."""

    @classmethod
    def build(cls, stack: Stack, user: UserParams | None = None,
              backends_key: str | None = None) -> HostedTiers:
        """The stack's litellm-served tiers; ``user``: the user's litellm_config.yaml
        parameters; ``backends_key``: multi-machine tiers' key when that file gives none."""
        params = stack_params(stack, user or {})
        served = [t for t in stack.tiers if t.backend == "litellm"]
        return cls(params, {t.name: Backends(t, params[t.name], backends_key)
                            for t in served if t.backends},
                   {t.name: remote_timeouts(stack, t) for t in served})

    def carry_over(self, old: HostedTiers) -> None:
        """Keep the old Backends (Router counts, cooldowns, session pins) of unchanged tiers."""
        for name, backends in self.backends.items():
            previous = old.backends.get(name)
            if previous is not None and (previous.tier, previous.params) == (backends.tier,
                                                                             backends.params):
                self.backends[name] = previous

    async def _call(self, tier: Tier, endpoint: str) -> Call:
        """The litellm coroutine answering ``endpoint`` (a Router's for a multi-machine tier)."""
        litellm = await load_litellm()
        backends = self.backends.get(tier.name)
        if backends is not None:
            return backends.call(litellm, endpoint)
        if endpoint == "chat":
            call: Call = litellm.acompletion
            return call
        return await _messages_adapter()

    async def _answer(self, tier: Tier, call: Call, params: dict[str, Any]) -> Any:
        """litellm's answer (a stream: once it started) within ``response_timeout`` (plus
        GRACE: litellm, given the same limit per attempt, fires first when it can).

        A timeout is a 504; a multi-machine tier none of whose backends answers, a 503
        naming them; any other failure, the provider's own status.
        """
        response = self.limits[tier.name].response
        try:
            return await asyncio.wait_for(call(**params), response + GRACE if response else None)
        except asyncio.TimeoutError:
            raise ProviderError(504, f"tier '{tier.name}': no answer within response_timeout "
                                     f"({response:g} s)", TIMEOUT_CODE) from None
        except Exception as exc:  # litellm raises its own hierarchy; keep the provider's view
            backends = self.backends.get(tier.name)
            down = backends.unanswered(exc) if backends is not None else None
            raise (down or provider_error(exc, tier.name)) from exc

    async def chat(self, tier: Tier, data: dict[str, Any], send: Send, extra: Headers,
                   session: str = "") -> None:
        """Answer one chat completion, streamed or not, named after the tier."""
        call = await self._call(tier, "chat")
        params = chat_params(tier, self._base(tier, "chat"), data)
        if session and tier.name in self.backends:
            params["metadata"] = {"session_id": session}
        result = await self._answer(tier, call, params)
        extra = [*extra, *self._answered_by(tier, result)]
        if not data.get("stream"):
            body = result.model_dump()
            if body.get("choices"):
                body["choices"][0].setdefault("message", {})["name"] = tier.name
            await _send_json(send, body, extra)
            return
        await _start(send, b"text/event-stream", [(b"x-accel-buffering", b"no"), *extra])
        await _relay(result, _ChatChunks(tier.name), self.limits[tier.name].idle, send)

    async def messages(self, tier: Tier, data: dict[str, Any], send: Send, extra: Headers) -> None:
        """Answer one Anthropic Messages request (``POST /v1/messages``) from this tier."""
        call = await self._call(tier, "messages")
        params = messages_params(tier, self._base(tier, "messages"), data)
        result = await self._answer(tier, call, params)
        extra = [*extra, *self._answered_by(tier, result)]
        if not data.get("stream"):
            body = result if isinstance(result, dict) else result.model_dump()
            await _send_json(send, dict(body), extra)
            return
        await _start(send, b"text/event-stream", [(b"x-accel-buffering", b"no"), *extra])
        await _relay(result, _MessagesChunks(tier.name), self.limits[tier.name].idle, send)

    def _base(self, tier: Tier, endpoint: str) -> dict[str, Any]:
        """Model, credentials and litellm's per-attempt time limits (models.ini's, over any
        in litellm_config.yaml); a multi-machine tier's Router is addressed by the tier name
        (its deployments carry the user's parameters)."""
        routed = tier.name in self.backends
        limits = litellm_timeouts(self.limits[tier.name],
                                  connect=not (routed and endpoint == "messages"))
        return {"model": tier.name, **limits} if routed else {**self.params[tier.name], **limits}

    def _answered_by(self, tier: Tier, result: Any) -> Headers:
        backends = self.backends.get(tier.name)
        return backends.answered_by(result) if backends is not None else []
