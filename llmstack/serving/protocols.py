"""What each client protocol the router serves needs: its job, tier name and error shape.

``ROUTED_PATHS`` maps every model-carrying endpoint to the job ``auto`` routes
it by: ``chat`` (the step-down ladder: chat and text completions, Anthropic
Messages and count_tokens, Responses), ``embed`` or ``rerank`` (the first tier
with that role). The tier's name goes where each protocol carries a model
(:class:`TierName`); errors on the Anthropic endpoints use Anthropic's shape.
"""

from __future__ import annotations

import json
import re
from typing import Any

from swapper.errors import error_json
from swapper.proxy import Intercepted

CHAT, EMBED, RERANK = "chat", "embed", "rerank"
ROUTED_PATHS: dict[str, str] = {
    **dict.fromkeys(("/v1/chat/completions", "/v1/completions", "/v1/messages",
                     "/v1/messages/count_tokens", "/v1/responses"), CHAT),
    **dict.fromkeys(("/v1/embeddings", "/embeddings"), EMBED),
    **dict.fromkeys(("/v1/rerank", "/v1/reranking", "/rerank", "/reranking"), RERANK),
}
ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
ERROR_STATUSES = frozenset({400, 401, 403, 404, 413, 422, 429, 500, 501, 502, 503, 504})
"""Upstream statuses held back so the router can re-shape (or step up from) the error."""

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error",
                    529: "overloaded_error"}
_UNSUPPORTED_INPUT = b"input is not supported"  # llama-server's 500 for an image/audio part
CONTEXT_OVERFLOW = b"exceed_context_size_error"
"""llama-server's error type for a prompt its window cannot hold."""
CONTEXT_CODE = "context_length_exceeded"
"""The stack's (and OpenAI's) error code for it, which clients recognise."""


def anthropic_error(status: int, message: str) -> bytes:
    """Anthropic's error body: ``{"type":"error","error":{"type","message"}}``."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def _message(body: bytes) -> str:
    """The message of an OpenAI- or Anthropic-shaped error body, else the body's text."""
    try:
        data = json.loads(body)
        error = data["error"]
        return str(error["message"]) if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()


def overflow_message(tier: str, body: bytes) -> str:
    """The stack's words for llama-server's ``exceed_context_size_error`` ``body``: what
    litellm, opencode, Claude Code and Codex recognise as a context overflow (the phrases
    :class:`llmstack.serving.routing.ContextTooLarge` uses), with llama-server's counts."""
    try:
        error = json.loads(body)["error"]
        prompt, window = error["n_prompt_tokens"], error["n_ctx"]
    except (ValueError, KeyError, TypeError):
        prompt = window = None
    if not (isinstance(prompt, int) and isinstance(window, int)):
        return f"tier '{tier}' cannot hold this request in its context window: prompt is too long"
    return (f"This model's maximum context length is {window} tokens (tier '{tier}'), but this "
            f"request has {prompt} input tokens: prompt is too long")


def client_error(answer: Intercepted, path: str, tier: str) -> Intercepted:
    """An upstream error as the client's protocol spells it.

    llama-server's ``exceed_context_size_error`` becomes the stack's own 400
    ``context_length_exceeded`` (:func:`overflow_message`), which clients recognise.
    llama-server answers 500 for an image (or audio) part sent to a model without a
    projector; the client's input is at fault, so it becomes a 400 invalid_request_error
    (a 500 is retried by SDKs). On the Anthropic endpoints every error gets Anthropic's shape.
    """
    status, body = answer.status, answer.body
    if status == 400 and CONTEXT_OVERFLOW in body:
        body = error_json(overflow_message(tier, body), "invalid_request_error", CONTEXT_CODE)
    elif status == 500 and _UNSUPPORTED_INPUT in body:
        status = 400
        message = f"tier '{tier}' cannot take this input: {_message(body)}"
        body = error_json(message, "invalid_request_error", "unsupported_input")
    if path in ANTHROPIC_PATHS:
        body = anthropic_error(status, _message(body))
    if body is answer.body:
        return answer
    headers = [(k, v) for k, v in answer.headers if k.lower() not in (b"content-length",
                                                                       b"content-type")]
    headers += [(b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]
    return Intercepted(status, body, headers)


_DELTA = re.compile(rb'"delta"\s*:\s*\{')
_NEXT_ITEM = re.compile(rb'\}\s*,\s*\{')
_CHOICES = re.compile(rb'"choices"\s*:\s*\[')


class TierName:
    """Response hook: the tier's name where each protocol names the model.

    Chat: ``name`` on the first delta and on the message. Messages and Responses: the
    ``model`` of ``message_start`` / the first ``response`` event, and of the body.
    Embeddings and rerank: the body's ``model``.
    """

    def __init__(self, tier: str) -> None:
        self.tier = tier
        self._name = b'"name":' + json.dumps(tier, ensure_ascii=False).encode()

    def event_bytes(self, data: bytes) -> bytes | None:
        """A chat chunk named by inserting ``"name"`` into its one ``delta`` object, when the
        bytes show that object is the first choice's and holds no name (else None: decoded).

        JSON strings cannot hold an unescaped quote, so ``"delta":{`` only ever starts that
        key's object; no ``}``, ``,``, ``{`` between ``"choices":[`` and it means no earlier
        choice ended there.
        """
        found = _DELTA.search(data)
        if found is None or _DELTA.search(data, found.end()) is not None or b'"name"' in data:
            return None
        choices = _CHOICES.search(data, 0, found.start())
        if choices is None or _NEXT_ITEM.search(data, choices.end(), found.start()):
            return None
        cut = found.end()
        close = data[cut:].lstrip()[:1] == b"}"
        return data[:cut] + self._name + (b"" if close else b",") + data[cut:]

    def event(self, data: dict[str, Any]) -> bool:
        choices = data.get("choices")
        if choices and isinstance(choices[0], dict) and isinstance(choices[0].get("delta"), dict):
            choices[0]["delta"]["name"] = self.tier
            return True
        inner = data.get("message") if data.get("type") == "message_start" else data.get("response")
        if isinstance(inner, dict):
            inner["model"] = self.tier
            return True
        return False

    def body(self, data: dict[str, Any]) -> None:
        choices = data.get("choices")
        if choices and isinstance(choices[0], dict) and isinstance(choices[0].get("message"), dict):
            choices[0]["message"]["name"] = self.tier
        if "model" in data:
            data["model"] = self.tier
