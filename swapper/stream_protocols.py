"""How each streaming protocol says "complete", and how it spells an in-band error.

A stream is complete by its own protocol's final event: ``data: [DONE]`` for
OpenAI chat and completions, ``message_stop`` for Anthropic Messages,
``response.completed`` / ``response.failed`` / ``response.incomplete`` for the
Responses API. A raw stream (``/upstream/...``) is complete when the upstream
ends it cleanly. Only a stream that is not complete gets an error event, in the
protocol's own shape, so its client fails instead of taking a cut answer as whole.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import error_json

_Marker = re.Pattern[bytes]


@dataclass(frozen=True)
class StreamProtocol:
    """One SSE dialect: its end marker (None: a clean EOF is complete) and its error event."""

    name: str
    end: _Marker | None
    hints: tuple[bytes, ...] = ()
    """Literals one of which every end marker contains: a cheap test before the pattern."""
    window: int = 64
    """Bytes of the previous chunk kept so a marker split across chunks is still seen."""
    after_opening: frozenset[bytes] = frozenset()
    """Event types that only come after the protocol's opening event (none: no opening)."""

    def opening_event(self) -> bytes:
        """The protocol's opening event, when the upstream's stream lacks it (Anthropic's
        ``message_start``; its counts unknown, so zero; its model named by any rewrite)."""
        message: dict[str, Any] = {
            "id": "msg_" + uuid.uuid4().hex, "type": "message", "role": "assistant", "content": [],
            "model": "", "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}
        data = json.dumps({"type": "message_start", "message": message}).encode()
        return b"event: message_start\ndata: " + data + b"\n\n"

    def error_event(self, message: str, code: str) -> bytes:
        """An SSE event this protocol's clients raise on."""
        if self.name == "anthropic":
            anthropic = {"type": "error", "error": {"type": "api_error", "message": message}}
            return b"event: error\ndata: " + json.dumps(anthropic).encode() + b"\n\n"
        if self.name == "responses":
            # The Responses API's error event, plus an OpenAI ``error`` object: the openai SDK
            # raises APIError on ``event: error`` only when the data carries ``error``.
            payload: dict[str, Any] = {
                "type": "error", "code": code, "message": message, "param": None,
                "error": {"message": message, "type": "server_error", "code": code}}
            return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
        return b"data: " + error_json(message, "server_error", code) + b"\n\n"


def _type_marker(*types: str) -> _Marker:
    names = "|".join(re.escape(t) for t in types)
    return re.compile(rb'"type"\s*:\s*"(?:' + names.encode() + rb')"')


OPENAI = StreamProtocol("openai", re.compile(rb"^data: ?\[DONE\]", re.MULTILINE), (b"[DONE]",))
ANTHROPIC = StreamProtocol("anthropic", _type_marker("message_stop"), (b"message_stop",),
                           after_opening=frozenset({
                               b"content_block_start", b"content_block_delta",
                               b"content_block_stop", b"message_delta", b"message_stop"}))
_RESPONSE_ENDS = ("response.completed", "response.failed", "response.incomplete")
RESPONSES = StreamProtocol("responses", _type_marker(*_RESPONSE_ENDS),
                           tuple(t.encode() for t in _RESPONSE_ENDS))
RAW = StreamProtocol("raw", None)

_BY_PATH = {"/v1/messages": ANTHROPIC, "/v1/responses": RESPONSES}


def protocol_for(path: str) -> StreamProtocol:
    """The protocol of a model endpoint path (query string allowed); OpenAI's by default."""
    return _BY_PATH.get(path.partition("?")[0], OPENAI)


class EndWatch:
    """Sees a protocol's end marker in a stream fed chunk by chunk (split markers included)."""

    def __init__(self, protocol: StreamProtocol) -> None:
        self.protocol = protocol
        self.seen = protocol.end is None
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        if self.seen:
            return
        protocol = self.protocol
        scan = self._carry + chunk
        for hint in protocol.hints:
            if hint in scan and self._marked(scan, hint):
                self.seen = True
                break
        self._carry = scan[-protocol.window:]

    def _marked(self, scan: bytes, hint: bytes) -> bool:
        """The end marker around an occurrence of ``hint``: the pattern is tried on that line
        only, from its start (a multi-line ``^`` scan of a whole chunk costs microseconds)."""
        end = self.protocol.end
        at = scan.find(hint)
        while at >= 0 and end is not None:
            line = scan.rfind(b"\n", 0, at) + 1
            if end.search(scan, line, at + len(hint) + self.protocol.window):
                return True
            at = scan.find(hint, at + 1)
        return False


EVENT_END = re.compile(rb"\r?\n\r?\n")
_EVENT_TYPE = re.compile(rb'^event: ?(\S+)|"type"\s*:\s*"([^"]+)"', re.MULTILINE)


class OpeningGuard:
    """Puts a protocol's opening event back in front of a stream that starts without it.

    llama-server leaves out Anthropic's ``message_start`` when its first generated token is
    part of a UTF-8 character (an emoji, measured on this build: the stream starts with
    ``content_block_start``); the anthropic SDK's stream helper and Claude Code reject such a
    stream. The start is held until its first event is complete (at most :data:`LIMIT`
    bytes); an opening event goes in front only when that event is one of the protocol's
    :attr:`~StreamProtocol.after_opening` types (an ``error`` or ``ping`` passes as it is).
    """

    LIMIT = 16384

    def __init__(self, protocol: StreamProtocol) -> None:
        self.protocol = protocol
        self.pending = b""
        self.done = not protocol.after_opening

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to pass on now (b"" while the first event is incomplete)."""
        if self.done:
            return chunk
        self.pending += chunk
        end = EVENT_END.search(self.pending)
        if end is None and len(self.pending) <= self.LIMIT:
            return b""
        out = self.flush()
        if end is not None and self._first_type(out[:end.start()]) in self.protocol.after_opening:
            out = self.protocol.opening_event() + out
        return out

    def flush(self) -> bytes:
        """Whatever is held (the stream ended); nothing is held after this."""
        self.done = True
        out, self.pending = self.pending, b""
        return out

    @staticmethod
    def _first_type(event: bytes) -> bytes:
        """An event's type: its ``event:`` line, else the first ``"type"`` in its data."""
        found = _EVENT_TYPE.search(event)
        return b"" if found is None else (found.group(1) or found.group(2))
