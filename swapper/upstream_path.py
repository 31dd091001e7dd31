"""The model and upstream target of ``/upstream/{model}/{path}``, from the raw request path.

The target is built from the raw (still percent-encoded) path, never from the
decoded one, so an encoded ``%0D%0A`` can never become a line break on the
upstream connection. Contracts:

- a control character (below 0x20, or 0x7f), raw or percent-encoded, in the
  path or the query is a 400;
- ``.`` and ``..`` segments (in any percent-encoding) are resolved inside the
  model's namespace: ``..`` never climbs above the model's root, and a segment
  that decodes to a path with ``..`` in it (``..%2f``, ``..%5c``) is a 400;
- the model is the longest leading run of decoded segments that names a model
  or alias (names may hold ``/``); none is a 404.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote, unquote_to_bytes

from .errors import ApiError, shown

PREFIX = b"/upstream/"
_CONTROL = re.compile(rb"[\x00-\x20\x7f]|%(?:[01][0-9a-fA-F]|7[fF])")
_CONTROL_QUERY = re.compile(rb"[\x00-\x1f\x7f]|%(?:[01][0-9a-fA-F]|7[fF])")
_SEPARATOR = re.compile(r"[/\\]")


def _decoded(segment: bytes) -> str:
    return unquote_to_bytes(segment).decode("utf-8", "replace")


def raw_path(scope: dict) -> bytes:
    """The request's raw path (re-encoded from ``path`` if the server gives none)."""
    raw = scope.get("raw_path")
    if raw:
        return bytes(raw).split(b"?", 1)[0]
    return quote(scope["path"], safe="/:@!$&'()*+,;=-._~").encode("ascii")


def upstream_target(raw: bytes, query: bytes, resolve: Callable[[str], str | None]) -> tuple[str, str]:
    """(model name, target path) for a raw ``/upstream/...`` path; raises ApiError 400/404."""
    if _CONTROL.search(raw) or _CONTROL_QUERY.search(query):
        raise ApiError(400, "request path or query holds a control character")
    segments = raw.removeprefix(PREFIX).split(b"/")
    names = [_decoded(segment) for segment in segments]
    for split in range(len(segments), 0, -1):
        model = "/".join(names[:split])
        if resolve(model) is not None:
            break
    else:
        raise ApiError(404, f"model '{shown(names[0])}' not found")
    kept: list[bytes] = []
    for segment, name in zip(segments[split:], names[split:], strict=True):
        if name == ".":
            continue
        if name == "..":
            if kept:
                kept.pop()
            continue
        if ".." in _SEPARATOR.split(name):
            raise ApiError(400, f"path segment {segment.decode('latin-1')!r} climbs out of the model")
        kept.append(segment)
    return model, "/" + b"/".join(kept).decode("latin-1")
