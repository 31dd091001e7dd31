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
ANTHROPIC = StreamProtocol("anthropic", _type_marker("message_stop"), (b"message_stop",))
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
