"""Bounded logs of one child: a ring of recent lines, a size-capped file, live followers.

Raw output is fed in blocks (:meth:`LogSink.feed`); a line longer than
``MAX_LINE_BYTES`` keeps its first ``MAX_LINE_BYTES`` and a note of how much was
cut, so a child can print lines of any length at a bounded cost. A model's log file is
named by :func:`log_file`, which never leaves its directory whatever the model id. Live
followers read :attr:`LogSink.live`, one bounded ring for all of them (filled only while
one follows).
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .events import FrameRing, Listeners

LineListener = Callable[[str, list[str]], None]
"""Called with a sink's name and the lines it just completed."""

MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_LINE_BYTES = 16 * 1024
MAX_NAME_CHARS = 200
"""A log file's name before ``.log`` (and ``.1`` when rotated): file systems allow 255 bytes."""
_KEPT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def file_name(name: str) -> str:
    """``name`` as one file name, different for different names: letters, digits, ``_``,
    ``.`` and ``-`` kept, any other character's UTF-8 bytes as ``%XX`` (``org/model`` is
    ``org%2Fmodel``), a leading ``.`` as ``%2E``; a name longer than MAX_NAME_CHARS is cut
    and ends in ``~`` and 16 hex digits of its sha256."""
    text = "".join(c if c in _KEPT else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
                   for c in name)
    if text.startswith("."):
        text = "%2E" + text[1:]
    if len(text) > MAX_NAME_CHARS:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        text = f"{text[:MAX_NAME_CHARS - 17]}~{digest}"
    return text or "%"


def log_file(directory: Path, model: str) -> Path:
    """Where ``model``'s log lives: ``<directory>/<file_name(model)>.log``."""
    return directory / f"{file_name(model)}.log"


class LogSink:
    """Keeps the last ``ring`` lines in memory and appends to ``path`` (rotated at 5 MB).

    The lines completed by one block go to the file in one write (llama-server prints about
    nine lines per request: a write and a seek for each cost about 18 system calls)."""

    def __init__(self, name: str, path: Path | None = None, ring: int = 500,
                 listeners: Listeners[LineListener] | None = None) -> None:
        """``listeners`` (shared by every sink of a manager) get each block's new lines."""
        self.name = name
        self._listeners = listeners if listeners is not None else Listeners[LineListener]()
        self.lines: deque[str] = deque(maxlen=ring)
        self.path = path
        self._file: IO[bytes] | None = None
        self._size = 0  # bytes in the file, counted here (no seek per write)
        self.live = FrameRing()
        """Each new line and its newline, for followers (``live.reader()``)."""
        self._partial = bytearray()
        self._cut = 0  # bytes of the current line dropped past MAX_LINE_BYTES
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._open()

    def feed(self, block: bytes) -> bool:
        """Add raw output; writes the completed lines, returns whether any line completed."""
        pieces = block.split(b"\n")
        done = []
        for piece in pieces[:-1]:
            self._take(piece)
            done.append(self._line())
        self._take(pieces[-1])
        if done:
            self._publish(done)
        return bool(done)

    def flush(self) -> None:
        """Write a last line that had no newline (the child's output ended)."""
        if self._partial or self._cut:
            self._publish([self._line()])

    def write(self, line: str) -> None:
        self._publish([line])

    def _take(self, piece: bytes) -> None:
        room = MAX_LINE_BYTES - len(self._partial)
        self._partial += piece[:max(room, 0)]
        self._cut += max(len(piece) - max(room, 0), 0)

    def _line(self) -> str:
        line = self._partial.decode("utf-8", "replace").rstrip("\r")
        if self._cut:
            line += f" [... {self._cut} bytes cut]"
        self._partial.clear()
        self._cut = 0
        return line

    def _publish(self, lines: list[str]) -> None:
        self.lines.extend(lines)
        for listener in self._listeners.all:
            listener(self.name, lines)
        if self.live.readers:
            for line in lines:
                self.live.push(line.encode("utf-8", "replace") + b"\n")
        if self._file is not None:
            data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
            self._file.write(data)
            self._file.flush()
            self._size += len(data)
            if self._size > MAX_FILE_BYTES:
                self._rotate()

    def _open(self) -> None:
        assert self.path is not None
        self._file = self.path.open("ab")
        self._size = self._file.tell()

    def _rotate(self) -> None:
        assert self._file is not None and self.path is not None
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._open()

    def tail(self, n: int) -> list[str]:
        return list(self.lines)[-n:]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
