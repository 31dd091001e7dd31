"""Time limits on the tiers litellm serves: hosted providers and tiers on other machines.

They honour the tier's ``response_timeout`` and ``idle_timeout`` as local tiers do, plus
:data:`CONNECT_TIMEOUT`. llmstack enforces the first two itself (``hosted.py``: the
answer, or a stream's start, within ``response_timeout`` plus :data:`GRACE`; each
stream chunk within ``idle_timeout``); litellm gets them too, per attempt, so that
its Router sees a timed-out backend fail (and cools it down) before llmstack gives up.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from swapper.config import Timeouts

from ..config.schema import Stack, Tier
from .swapper_config import tier_timeouts

CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection (TCP and TLS). A connect involves no generation: it takes
milliseconds on a LAN and well under a second to a hosted provider; 5 s still allows two
lost SYNs (resent after 1 s and 3 s) before a backend counts as unreachable."""
GRACE = 1.0
"""llmstack's own deadline comes this long after litellm's, which fires first when it can."""


def remote_timeouts(stack: Stack, tier: Tier) -> Timeouts:
    """The tier's response and idle timeouts (its own keys, else [DEFAULT]'s), connect 5 s."""
    return replace(tier_timeouts(stack, tier), connect=CONNECT_TIMEOUT)


def litellm_timeouts(limits: Timeouts, connect: bool = True) -> dict[str, Any]:
    """litellm's per-attempt ``timeout`` and ``stream_timeout`` (0 = none).

    ``timeout``: each read of an answer not streamed, which arrives whole, so
    ``response_timeout``. ``stream_timeout``: each read of a stream, its headers (within
    ``response_timeout``) and then every chunk (``idle_timeout``), so the longer of the two.
    Both as httpx limits with the connect timeout; ``connect=False``: plain seconds, for
    litellm entry points that take nothing else (the Router's Anthropic Messages), whose
    connect limit is then the same number.
    """
    stream_read = max(limits.response, limits.idle) if limits.response and limits.idle else 0
    if not connect:
        return {"timeout": limits.response or None, "stream_timeout": stream_read or None}
    import httpx

    def limit(read: float) -> httpx.Timeout:
        return httpx.Timeout(read or None, connect=limits.connect or None)

    return {"timeout": limit(limits.response), "stream_timeout": limit(stream_read)}
