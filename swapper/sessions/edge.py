"""The proxy's part of the session cache: pin a request to its session's slot (after the
session's saved cache is restored there, on its first request), and judge that restore from
the first answer's ``timings``.

A request costs this only when its model's child has sessions (``Manager.sessions``) and its
endpoint generates (:data:`SESSION_PATHS`); every other request pays one dict lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..types import Message, Send
from .cache import ChildSessions
from .keys import session_id_from, session_key
from .table import with_slot
from .verify import TimingsTap

SESSION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses",
                           "/v1/messages"})
"""The endpoints whose requests belong to a session (embeddings, ``count_tokens`` and the raw
``/upstream/`` routes never do)."""
IGNORES_ID_SLOT = frozenset({"/v1/messages"})
"""Endpoints where llama-server ignores ``id_slot`` (measured on this build: it picks the idle
slot sharing the longest prefix, which after a restore is the restored one)."""


@dataclass(slots=True)
class Pinned:
    """One request pinned to ``slot`` of its session; :meth:`close` when it is over."""

    child: ChildSessions
    session: str
    slot: int
    forced: bool
    """The request carries our ``id_slot`` (else the server chose the slot)."""
    cache_prompt: bool
    tap: TimingsTap | None
    """Fed the answer when it verifies a restore."""

    def wrap(self, send: Send) -> Send:
        """``send``, feeding the answer's body to the tap when there is one."""
        tap = self.tap
        if tap is None:
            return send

        async def tapped(message: Message) -> None:
            if message["type"] == "http.response.body":
                tap.feed(message.get("body", b""))
            await send(message)
        return tapped

    def close(self, answered: bool) -> None:
        """The request is over (``answered``: its answer went out whole); judges a restore."""
        self.child.release(self.slot)
        if self.tap is not None:
            self.child.after_response(self.session, self.tap.timings() if answered else None,
                                      self.forced, self.cache_prompt)


async def pin(child: ChildSessions, headers: Iterable[tuple[bytes, bytes]], path: str,
              data: Mapping[str, Any], body: bytes) -> tuple[bytes, Pinned | None]:
    """The body to forward (with ``"id_slot"`` spliced in) and the pin, or ``body`` and None
    when the request is not pinned (no session, the feature off, its slot busy)."""
    if child.off:  # before the hashing: a child whose restores are broken pins nothing
        return body, None
    session = session_key(session_id_from(headers), data)
    slot = await child.before_request(session)
    if session is None or slot is None:
        return body, None
    spliced = None
    if path not in IGNORES_ID_SLOT and "id_slot" not in data:
        spliced = with_slot(body, slot)
    tap = TimingsTap() if child.wants_timings(session) else None
    pinned = Pinned(child, session, slot, spliced is not None, data.get("cache_prompt") is not False,
                    tap)
    return spliced or body, pinned
