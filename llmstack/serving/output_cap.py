"""A tier's output cap, on every protocol: how much one answer may generate.

llama-server's ``-n`` (a tier's ``max_output_tokens``) is only a default: a request's own
output field overrides it, and ``/v1/messages`` without ``max_tokens`` asks for 4096. So
the stack clamps every generating request itself, for the tier that answers it, before
the tier (llama-server, litellm) sees it. Pure: no I/O.

* The output fields: ``n_predict`` (llama-server's own), ``max_completion_tokens`` and
  ``max_tokens`` (chat, completions, Anthropic Messages), ``max_output_tokens``
  (Responses). ``null`` is absent; a negative integer asks for no limit (llama-server's
  ``-1``); any other non-integer is the caller's error (:class:`BadOutputField`).
* A tier's limit (:func:`output_limit`): its ``max_output_tokens``, and what its
  ``ctx_size`` leaves after the prompt's estimate, never less than :data:`OUTPUT_RESERVE`
  (the estimate is rough, and the window's end stops llama-server anyway).
* The answer may generate the least of what it asks for and the limit
  (:func:`clamp`): every output field the body has gets that number, and the protocol's
  own field is added when the body has none the protocol reads, so a request that asks
  for nothing (Codex sends no field) gets the cap too. On a remote tier (hosted or on
  other machines) that is done only for a ``max_output_tokens`` the tier states: a
  provider's window is not its output limit.
* Routing needs room for the prompt plus :func:`output_reserve` only, not for what a
  request asks for (Claude Code asks for 32000 on every request).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

OUTPUT_FIELDS = ("n_predict", "max_completion_tokens", "max_tokens", "max_output_tokens")
"""Every request field llama-server or a client protocol reads as the output limit."""
PROTOCOL_FIELDS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("max_tokens", "max_completion_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/messages": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
}
"""The generating endpoints and the output fields their protocol defines (the first is
added to a body that has none of them)."""
OUTPUT_RESERVE = 1024
"""Tokens of a window kept for the answer when routing (fewer when the request or the tier
allows fewer): a request is too long for a tier only when its prompt leaves less."""


class BadOutputField(ValueError):
    """An output field that is neither an integer nor null (HTTP 400)."""


class Clamped(NamedTuple):
    """What a request may generate on one tier, and the body fields that say so."""

    tokens: int | None
    """The answer's limit; None when neither the request nor the tier sets one."""
    changes: dict[str, int]
    """The fields to set in the body for that (empty: the body already says it)."""


def asked_output(body: Mapping[str, Any]) -> int | None:
    """The least output the body's fields ask for; None when none asks for a limit.

    Raises :class:`BadOutputField` for a field that is not an integer (or null).
    """
    asked: int | None = None
    for key in OUTPUT_FIELDS:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadOutputField(f"'{key}' must be an integer, not {type(value).__name__}")
        if value >= 0 and (asked is None or value < asked):
            asked = value
    return asked


def output_limit(max_output_tokens: int, ctx_size: int, prompt_tokens: int) -> int | None:
    """What one answer may generate on a tier: its ``max_output_tokens`` (0: unset) and
    what its ``ctx_size`` (0: unknown) leaves after ``prompt_tokens``, at least
    :data:`OUTPUT_RESERVE` (or the whole window when it is smaller); None: no limit known."""
    limits = [max_output_tokens] if max_output_tokens > 0 else []
    if ctx_size > 0:
        limits.append(max(ctx_size - prompt_tokens, min(OUTPUT_RESERVE, ctx_size)))
    return min(limits, default=None)


def output_reserve(asked: int | None, max_output_tokens: int) -> int:
    """The room routing keeps for the answer: :data:`OUTPUT_RESERVE`, or less when the
    request (``asked``) or the tier (``max_output_tokens``, 0: unset) allows less."""
    return min(OUTPUT_RESERVE, OUTPUT_RESERVE if asked is None else asked,
               max_output_tokens or OUTPUT_RESERVE)


def clamp(body: Mapping[str, Any], path: str, limit: int | None, fill: bool = True) -> Clamped:
    """The answer's limit on a tier allowing ``limit`` tokens (:func:`output_limit`), and
    the fields that make ``body`` say it; nothing for an endpoint that does not generate.
    ``fill=False``: a body that asks for no limit is left as it is (a provider's window is
    not its output limit, so only a cap the tier states may be added there).

    Raises :class:`BadOutputField` (see :func:`asked_output`).
    """
    protocol = PROTOCOL_FIELDS.get(path)
    if protocol is None:
        return Clamped(None, {})
    asked = asked_output(body)
    if asked is None and not fill:
        return Clamped(None, {})
    tokens = asked if limit is None else limit if asked is None else min(asked, limit)
    if tokens is None:
        return Clamped(None, {})
    changes = {key: tokens for key in OUTPUT_FIELDS if key in body and body[key] != tokens}
    if not any(key in body for key in protocol):
        changes[protocol[0]] = tokens
    return Clamped(tokens, changes)
