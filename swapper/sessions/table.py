"""Which session holds which slot of a running child (pure state).

llama-server cannot say which conversation a slot holds (``/slots`` shows no prompt), and
without ``id_slot`` it picks a slot by prefix similarity, so a short unrelated request can
take a restored session's slot (FINDINGS Q1, Q3). The table is llmstack's own answer: each
session is pinned to one slot (its requests carry ``id_slot``), a new session takes a free
slot, else the least recently used session's slot, whose context is then gone.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

_SPACE = b" \t\r\n"


@dataclass(frozen=True)
class Assignment:
    """Where a session's request goes: ``slot``; ``displaced`` is the session that held it
    before (its context is lost), ``new`` whether the session had no slot yet."""

    slot: int
    new: bool
    displaced: str | None = None


class SlotTable:
    """Sessions of one child and their slots, least recently used first."""

    def __init__(self, total_slots: int) -> None:
        if total_slots < 1:
            raise ValueError("a child has at least one slot")
        self.total_slots = total_slots
        self._held: OrderedDict[str, tuple[int, float]] = OrderedDict()  # -> slot, last use

    def __len__(self) -> int:
        return len(self._held)

    def slot_of(self, session: str) -> int | None:
        held = self._held.get(session)
        return None if held is None else held[0]

    def assign(self, session: str, now: float = 0.0) -> Assignment:
        """The session's slot, used at ``now``: its own, a free one (lowest id), or the least
        recently used session's."""
        if (held := self._held.get(session)) is not None:
            self._held[session] = (held[0], now)
            self._held.move_to_end(session)
            return Assignment(held[0], new=False)
        used = {slot for slot, _ in self._held.values()}
        free = next((s for s in range(self.total_slots) if s not in used), None)
        displaced = None
        if free is None:
            displaced, (free, _) = self._held.popitem(last=False)
        self._held[session] = (free, now)
        return Assignment(free, new=True, displaced=displaced)

    def drop(self, session: str) -> None:
        """Forget a session (its slot was cleared, or it no longer holds its context)."""
        self._held.pop(session, None)

    def holders(self) -> list[tuple[str, int, float]]:
        """(session, slot, last use), most recently used first: the order to save them in."""
        return [(session, slot, used) for session, (slot, used) in reversed(self._held.items())]


def with_slot(body: bytes, slot: int) -> bytes | None:
    """``body`` (a JSON object) with ``"id_slot": slot`` as its first member, spliced in without
    re-encoding it; None when the body is not a JSON object. A client's own ``id_slot`` later in
    the body would win (JSON's last duplicate does in llama-server): check for it first. Pure."""
    rest = body.lstrip(_SPACE)
    if not rest.startswith(b"{"):
        return None
    inner = rest[1:]
    separator = b"" if inner.lstrip(_SPACE).startswith(b"}") else b","
    return b'{"id_slot":' + str(int(slot)).encode() + separator + inner
