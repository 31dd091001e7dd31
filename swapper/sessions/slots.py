"""Calls to one llama-server child's slots (save, restore, erase, list) and its ``/props``.

Contracts (the server's shapes: ``notes/session-cache/FINDINGS.md`` Q1, Q2, Q7):

- Every call ends within its ``timeout`` (seconds): past it the connection is dropped and
  :class:`SlotTimeout` raised. The server may still carry the action out later (a save waits
  for a busy slot); the caller treats the file as unknown.
- A slot id is checked against the child's ``total_slots`` (from :meth:`SlotClient.props`):
  the server wraps an id out of range onto another slot silently.
- Only llmstack-made file names are sent (hex, ``.bin`` or ``.tmp``).
- Answers are read up to :data:`MAX_BODY` bytes and validated; anything else (a status other
  than 200, a body that is not the documented shape) is a :class:`SlotError` with one line.
  A restore the server refuses (400: incompatible, truncated or foreign file) is
  :class:`RestoreRejected`; it has cleared the target slot.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from ..config import Timeouts
from ..types import Headers
from ..upstream import UpstreamError, UpstreamPool, UpstreamTimeout, origin

MAX_BODY = 1 << 20
"""Bytes of an answer read at most (``/props`` carries the chat template)."""
MAX_SLOTS = 4096
CONNECT_TIMEOUT = 5.0
_FILENAME = re.compile(r"[0-9a-f][0-9a-f.]{0,126}\.(?:bin|tmp)\Z")


class SlotError(Exception):
    """A slot call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class SlotTimeout(SlotError):
    """A slot call did not end within its timeout."""


class RestoreRejected(SlotError):
    """The server refused to restore a file (and cleared the slot)."""


@dataclass(frozen=True)
class Props:
    """What ``GET /props`` says that matters here."""

    total_slots: int
    n_ctx: int
    """Cells per slot."""
    multimodal: bool


@dataclass(frozen=True)
class SlotState:
    """One slot of ``GET /slots``: ``tokens`` is None for a slot that ran no task since the
    server started (restored or empty: the server does not say which)."""

    id: int
    n_ctx: int
    tokens: int | None


@dataclass(frozen=True)
class SlotResult:
    """A save or restore: tokens and bytes moved, and the server's own milliseconds."""

    slot: int
    tokens: int
    bytes: int
    ms: float


def _count(data: dict[str, Any], name: str, high: int = 1 << 50) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise SlotError(f"the server's answer has no valid {name!r}")
    return value


def _ms(data: dict[str, Any], name: str) -> float:
    timings = data.get("timings")
    value = timings.get(name) if isinstance(timings, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
        message = data["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", "replace")
    return str(message).splitlines()[0][:200] if str(message).strip() else "(no message)"


class SlotClient:
    """Slot calls to the llama-server at ``base_url`` (``http://host:port``)."""

    def __init__(self, base_url: str, pool: UpstreamPool, api_key: str | None = None) -> None:
        self.host, self.port, self.prefix = origin(base_url)
        self.pool = pool
        self.headers: Headers = [(b"content-type", b"application/json")]
        if api_key:
            self.headers.append((b"authorization", f"Bearer {api_key}".encode("latin-1")))
        self.total_slots: int | None = None

    async def props(self, timeout: float) -> Props:
        """``GET /props``; remembers ``total_slots`` for the slot id checks."""
        data = await self._call("GET", "/props", None, timeout)
        settings = data.get("default_generation_settings")
        modalities = data.get("modalities")
        props = Props(_count(data, "total_slots", MAX_SLOTS),
                      _count(settings, "n_ctx") if isinstance(settings, dict) else 0,
                      isinstance(modalities, dict) and any(v is True for v in modalities.values()))
        if props.total_slots < 1:
            raise SlotError("the server reports no slots")
        self.total_slots = props.total_slots
        return props

    async def slots(self, timeout: float) -> list[SlotState]:
        """``GET /slots``."""
        data = await self._call("GET", "/slots", None, timeout)
        if not isinstance(data, list) or len(data) > MAX_SLOTS:
            raise SlotError("the server's slot list is not a list")
        states = []
        for item in data:
            if not isinstance(item, dict):
                raise SlotError("the server's slot list holds something else")
            tokens = _count(item, "n_prompt_tokens") if "n_prompt_tokens" in item else None
            states.append(SlotState(_count(item, "id", MAX_SLOTS), _count(item, "n_ctx"), tokens))
        return states

    async def save(self, slot: int, filename: str, timeout: float) -> SlotResult:
        """Save ``slot`` to ``filename`` in the child's ``--slot-save-path``."""
        data = await self._action(slot, "save", filename, timeout)
        return SlotResult(slot, _count(data, "n_saved"), _count(data, "n_written"), _ms(data, "save_ms"))

    async def restore(self, slot: int, filename: str, timeout: float) -> SlotResult:
        """Load ``filename`` into ``slot``; :class:`RestoreRejected` when the server refuses it."""
        data = await self._action(slot, "restore", filename, timeout)
        return SlotResult(slot, _count(data, "n_restored"), _count(data, "n_read"),
                          _ms(data, "restore_ms"))

    async def erase(self, slot: int, timeout: float) -> int:
        """Empty ``slot``; returns the tokens it held."""
        return _count(await self._action(slot, "erase", None, timeout), "n_erased")

    async def _action(self, slot: int, action: str, filename: str | None, timeout: float) -> dict[str, Any]:
        if self.total_slots is None:
            raise SlotError("the server's slots are not known yet (props first)")
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < self.total_slots:
            raise ValueError(f"slot {slot!r} is not one of the server's {self.total_slots}")
        if filename is not None and not _FILENAME.match(filename):
            raise ValueError(f"{filename[:80]!r} is not a session file name")
        body = json.dumps({"filename": filename} if filename is not None else {}).encode()
        try:
            data = await self._call("POST", f"/slots/{slot}?action={action}", body, timeout)
        except SlotError as exc:
            if action == "restore" and exc.status == 400:
                raise RestoreRejected(str(exc), exc.status) from None
            raise
        if not isinstance(data, dict) or data.get("id_slot") != slot:
            raise SlotError(f"the server's {action} answer names another slot")
        if filename is not None and data.get("filename") != filename:
            raise SlotError(f"the server's {action} answer names another file")
        return data

    async def _call(self, method: str, target: str, body: bytes | None, timeout: float) -> Any:
        what = f"{method} {target.split('?')[0]}"
        try:
            return await asyncio.wait_for(self._exchange(method, target, body or b"", timeout), timeout)
        except (asyncio.TimeoutError, UpstreamTimeout):
            raise SlotTimeout(f"{what}: no answer within {timeout:g} s") from None
        except UpstreamError as exc:
            raise SlotError(f"{what}: {str(exc).splitlines()[0][:200]}") from None

    async def _exchange(self, method: str, target: str, body: bytes, timeout: float) -> Any:
        limits = Timeouts(min(CONNECT_TIMEOUT, timeout), timeout, timeout)
        resp = await self.pool.request(method, self.host, self.port, self.prefix + target,
                                       self.headers, body, limits)
        parts: list[bytes] = []
        size = 0
        try:
            while (chunk := await resp.next_chunk()) is not None:
                size += len(chunk)
                if size > MAX_BODY:
                    raise SlotError(f"{method} {target}: answer larger than {MAX_BODY} bytes")
                parts.append(chunk)
        except BaseException:
            resp.close(reuse=False)
            raise
        resp.close()
        data = b"".join(parts)
        if resp.status != 200:
            raise SlotError(f"{method} {target.split('?')[0]}: {resp.status} {_error_text(data)}",
                            resp.status)
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise SlotError(f"{method} {target}: the answer is not JSON") from None
