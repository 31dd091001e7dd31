"""OpenAI-style error envelopes with the right HTTP status and ``type``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

# opencode retries anything typed server_error (~70 s); client errors must say so.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "server_error",
    504: "timeout_error",
}


@dataclass
class ApiError(Exception):
    """An error answered to the client as ``{"error": {...}}``."""

    status: int
    message: str
    code: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> bytes:
        return error_json(self.message, self.type, self.code or str(self.status))


MAX_NAME = 256
"""The longest model name a request may carry (configured names are far shorter)."""
SHOWN_CHARS = 100


def shown(name: str) -> str:
    """A client's name as an error message quotes it: at most :data:`SHOWN_CHARS`
    characters, then how long it was (a path or a body may carry megabytes)."""
    return name if len(name) <= SHOWN_CHARS else f"{name[:SHOWN_CHARS]}… ({len(name)} characters)"


def request_model(value: object) -> str:
    """A request's ``model``: a non-empty string of at most :data:`MAX_NAME` characters
    (400 otherwise), so it can go into errors, events and logs whole."""
    if not isinstance(value, str) or not value:
        raise ApiError(400, "request has no 'model'" if value in (None, "")
                       else "'model' must be a string")
    if len(value) > MAX_NAME:
        raise ApiError(400, f"'model' is longer than {MAX_NAME} characters: {shown(value)}")
    return value


def error_json(message: str, type_: str, code: str) -> bytes:
    """The JSON bytes of an OpenAI error envelope."""
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


def sse_error_event(message: str, code: str = "upstream_error") -> bytes:
    """An in-band SSE error event: clients treat it as a failure, never as a clean end."""
    return b"data: " + error_json(message, "server_error", code) + b"\n\n"


def unavailable(message: str, retry_after: int = 1, code: str = "unavailable") -> ApiError:
    """503 with Retry-After, which opencode honours instead of backing off for ~70 s."""
    return ApiError(503, message, code, {"retry-after": str(retry_after)})
