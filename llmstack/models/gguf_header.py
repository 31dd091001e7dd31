"""A GGUF file's metadata key/values, read with the standard library only.

The serving process reads GGUF headers for memory accounting; doing it without
``gguf`` and numpy keeps about 20 MB of RSS out of it (they are needed only to
*write* models, :mod:`llmstack.models.tiny_gguf`). The file is memory-mapped; values of
keys not asked for (such as a 150k-entry vocabulary) are stepped over, not decoded.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Container
from typing import Any

_MAGIC = b"GGUF"
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, data: mmap.mmap, order: str) -> None:
        self.data, self.order, self.pos = data, order, 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(self.order + fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self, decode: bool) -> str | None:
        size = self.unpack("Q")
        start, self.pos = self.pos, self.pos + size
        if self.pos > len(self.data):
            raise ValueError("truncated string")
        return bytes(self.data[start:self.pos]).decode("utf-8", "replace") if decode else None

    def _skip_strings(self, count: int) -> None:
        """Step over ``count`` strings (a vocabulary: one tight loop, not a call per string)."""
        length = struct.Struct(self.order + "Q").unpack_from
        data, end, pos = self.data, len(self.data), self.pos
        for _ in range(count):
            pos += 8 + length(data, pos)[0]
            if pos > end:
                raise ValueError("truncated string")
        self.pos = pos

    def value(self, kind: int, decode: bool) -> Any:
        if kind == _STRING:
            return self.string(decode)
        if kind == _ARRAY:
            item, count = self.unpack("I"), self.unpack("Q")
            if item in _SCALARS and not decode:
                self.pos += count * struct.calcsize(_SCALARS[item])
                return None
            if item == _STRING and not decode:
                self._skip_strings(count)
                return None
            values = [self.value(item, decode) for _ in range(count)]
            return values if decode else None
        fmt = _SCALARS.get(kind)
        if fmt is None:
            raise ValueError(f"unknown GGUF value type {kind}")
        return self.unpack(fmt)


def read_gguf_metadata(path: str | os.PathLike[str],
                       keys: Container[str] | None = None) -> dict[str, Any]:
    """The metadata of a GGUF file (only ``keys`` decoded, when given): strings, numbers,
    bools, lists. Raises ValueError for a file that is not GGUF or is cut short."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != _MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        found: dict[str, Any] = {}
        try:
            order = "<" if struct.unpack_from("<I", data, 4)[0] & 0xFFFF else ">"
            cursor = _Cursor(data, order)
            cursor.pos = 4
            cursor.unpack("I")  # version
            cursor.unpack("Q")  # tensor count
            for _ in range(cursor.unpack("Q")):
                key = cursor.string(True)
                assert key is not None
                wanted = keys is None or key in keys
                value = cursor.value(cursor.unpack("I"), wanted)
                if wanted:
                    found[key] = value
        except struct.error as exc:
            raise ValueError(f"{path}: truncated GGUF header") from exc
        return found
