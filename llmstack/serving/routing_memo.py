"""Per-session work that repeats on every turn, remembered for :func:`llmstack.serving.routing.classify`.

An agent session sends the same tool schemas and the same system prompt on every
turn; measuring them is most of classify's cost (compact JSON of ``tools``
about 45 us, the trigger scan of a 20 KB system prompt about 30 us). Both are
kept in small LRUs:

* the compact-JSON size of ``tools`` / ``functions``, keyed by the client's raw
  bytes from the key's last ``"tools":`` to the end of the body (agents put the
  tools after the messages). The tail bytes determine the value when the key is
  the top-level one; a nested key of that name is caught by also comparing the
  schema count and names, and costs a recomputation, never a wrong answer for
  a request whose tools differ in name or number;
* whether a long text holds an ultra trigger, keyed by the text itself.

Keys hold whole texts, so the bound is in entries (memory: entries x text size).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .lru import Lru

MIN_TEXT = 2048
"""Shorter texts are scanned directly: hashing them costs about as much."""


def _names(schemas: Any) -> tuple[Any, ...]:
    """Count and names of the schemas (OpenAI ``tools`` nest them under ``function``)."""
    if not isinstance(schemas, list):
        return (type(schemas).__name__,)
    names: list[Any] = []
    for schema in schemas:
        if isinstance(schema, dict):
            function = schema.get("function", schema)
            names.append(function.get("name") if isinstance(function, dict) else None)
        else:
            names.append(None)
    return tuple(names)


class RoutingMemo:
    """Bounded memos shared by every request of one app; :meth:`for_body` binds one request."""

    def __init__(self, max_entries: int = 64) -> None:
        self.schemas: Lru[bytes, tuple[tuple[Any, ...], int]] = Lru(max_entries)
        self.triggers: Lru[str, bool] = Lru(max_entries)

    def for_body(self, raw: bytes) -> BodyMemo:
        return BodyMemo(self, raw)


class BodyMemo:
    """The memo as one request's classification sees it (its raw bytes bound)."""

    __slots__ = ("memo", "raw")

    def __init__(self, memo: RoutingMemo, raw: bytes) -> None:
        self.memo = memo
        self.raw = raw

    def json_chars(self, key: str, schemas: Any, measure: Callable[[Any], int]) -> int:
        """``measure(schemas)``, remembered for the raw bytes from ``"<key>":`` on."""
        start = self.raw.rfind(b'"' + key.encode() + b'":')
        if start < 0:
            return measure(schemas)
        tail = self.raw[start:]
        names = _names(schemas)
        hit = self.memo.schemas.get(tail)
        if hit is not None and hit[0] == names:
            return hit[1]
        chars = measure(schemas)
        self.memo.schemas.put(tail, (names, chars))
        return chars

    def has_trigger(self, text: str, scan: Callable[[str], bool]) -> bool:
        """``scan(text)``, remembered for long texts."""
        if len(text) < MIN_TEXT:
            return scan(text)
        hit = self.memo.triggers.get(text)
        if hit is None:
            hit = scan(text)
            self.memo.triggers.put(text, hit)
        return hit
