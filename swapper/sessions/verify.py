"""Was a restore used? Judged from the first answer's ``timings`` after it.

On some llama.cpp builds a restore reports success and restores nothing (llama.cpp issue
26676). The server always re-reads at least the last prompt token, so a request that extends
the restored conversation shows ``cache_n >= min(n_restored, prompt) - 1`` when the restore
worked (measured: ``n_restored`` 6,050 -> ``cache_n`` 6,050, ``prompt_n`` 17). Any chat prompt
shares at least the template's first tokens with the restored one, so ``cache_n == 0`` in the
slot the restore went to, with prompt caching on, means nothing was restored: the build (for
that cache key) is marked broken and the feature turned off for it.
"""

from __future__ import annotations

import enum
import json
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

TAP_HEAD = 16 * 1024
TAP_TAIL = 64 * 1024
"""Bytes of an answer's start and end kept to find its counts: chat answers end with
``timings``, Anthropic streams start with their usage (``message_start``)."""
_TIMINGS = re.compile(rb'"timings"\s*:\s*(\{[^{}]{0,4096}\})')
# one level of nesting (``*_tokens_details``); unambiguous, so it never backtracks far
_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]{0,2048}(?:\{[^{}]{0,1024}\}[^{}]{0,2048}){0,8}\})')


@dataclass(frozen=True)
class Timings:
    """Prompt tokens taken from the cache and read anew."""

    cache_n: int
    prompt_n: int


def timings_from(value: Any) -> Timings | None:
    """The ``timings`` object of an answer (already parsed), or None if it is not one."""
    if not isinstance(value, dict):
        return None
    cache_n, prompt_n = _count(value.get("cache_n")), _count(value.get("prompt_n"))
    return None if cache_n is None or prompt_n is None else Timings(cache_n, prompt_n)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def timings_from_usage(usage: Any) -> Timings | None:
    """The counts in a ``usage`` object: Anthropic's (``cache_read_input_tokens`` and
    ``input_tokens`` read anew), the responses API's or chat's (``cached_tokens`` of the
    ``input_tokens`` / ``prompt_tokens`` in all)."""
    if not isinstance(usage, dict):
        return None
    cached = _count(usage.get("cache_read_input_tokens"))
    if cached is not None:
        fresh = _count(usage.get("input_tokens"))
        return Timings(cached, fresh) if fresh is not None else None
    for total_name, details_name in (("input_tokens", "input_tokens_details"),
                                     ("prompt_tokens", "prompt_tokens_details")):
        details = usage.get(details_name)
        total = _count(usage.get(total_name))
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        if total is not None and cached is not None and cached <= total:
            return Timings(cached, total - cached)
    return None


def timings_in(data: bytes) -> Timings | None:
    """The counts of an answer from its raw bytes (a JSON body or an SSE stream): the last
    ``"timings": {...}`` (llama-server's own), else the last ``"usage"`` that has them."""
    for pattern, read in ((_TIMINGS, timings_from), (_USAGE, timings_from_usage)):
        for match in reversed(list(pattern.finditer(data))):
            try:
                found = read(json.loads(match.group(1)))
            except ValueError:
                continue
            if found is not None:
                return found
    return None


class TimingsTap:
    """Fed an answer's body as it goes by; keeps its first :data:`TAP_HEAD` and last
    :data:`TAP_TAIL` bytes, where its counts are."""

    def __init__(self) -> None:
        self._head = b""
        self._tail: deque[bytes] = deque()
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        if len(self._head) < TAP_HEAD:
            self._head += chunk[:TAP_HEAD - len(self._head)]
        self._tail.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._tail[0]) >= TAP_TAIL:
            self._size -= len(self._tail.popleft())

    def timings(self) -> Timings | None:
        return timings_in(b"".join(self._tail)[-TAP_TAIL:]) or timings_in(self._head)


class Verdict(enum.Enum):
    OK = "ok"
    """The restored tokens were used."""
    MISS = "miss"
    """Fewer were used, for a reason outside the build: the conversation changed (edited or
    compacted), the request was not pinned to the slot, or it turned prompt caching off."""
    BROKEN = "broken"
    """Nothing was used although the request went to the restored slot: the build's restore
    restores nothing."""
    UNKNOWN = "unknown"
    """No timings, or nothing was restored."""


def judge(n_restored: int, timings: Timings | None, forced: bool, cache_prompt: bool = True) -> Verdict:
    """The verdict on a restore of ``n_restored`` tokens from the first answer after it;
    ``forced``: the request was pinned (``id_slot``) to the restored slot. Pure."""
    if timings is None or n_restored <= 0:
        return Verdict.UNKNOWN
    prompt = timings.cache_n + timings.prompt_n
    if timings.cache_n >= min(n_restored, prompt) - 1:
        return Verdict.OK
    if timings.cache_n == 0 and forced and cache_prompt:
        return Verdict.BROKEN
    return Verdict.MISS


class RestoreHealth:
    """Cache keys whose restores restore nothing, and why (for logs and ``/ui``); a key once
    broken stays so until the process restarts."""

    def __init__(self) -> None:
        self._broken: dict[str, str] = {}

    def reason(self, cache_key: str) -> str | None:
        """Why the feature is off for ``cache_key``, or None."""
        return self._broken.get(cache_key)

    def mark_broken(self, cache_key: str, reason: str) -> bool:
        """Turn the feature off for ``cache_key``; True the first time."""
        if cache_key in self._broken:
            return False
        self._broken[cache_key] = reason
        return True

    def broken(self) -> dict[str, str]:
        return dict(self._broken)
