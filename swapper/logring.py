"""Bounded logs of one child: a ring of recent lines, a size-capped file, live followers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from pathlib import Path
from typing import IO

MAX_FILE_BYTES = 5 * 1024 * 1024


class LogSink:
    """Keeps the last ``ring`` lines in memory and appends to ``path`` (rotated at 5 MB)."""

    def __init__(self, name: str, path: Path | None = None, ring: int = 500) -> None:
        self.name = name
        self.lines: deque[str] = deque(maxlen=ring)
        self.path = path
        self._file: IO[str] | None = None
        self._followers: set[asyncio.Queue[str]] = set()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def write(self, line: str) -> None:
        self.lines.append(line)
        for queue in self._followers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(line)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
            if self._file.tell() > MAX_FILE_BYTES:
                self._rotate()

    def _rotate(self) -> None:
        assert self._file is not None and self.path is not None
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = self.path.open("a", encoding="utf-8")

    def tail(self, n: int) -> list[str]:
        return list(self.lines)[-n:]

    def follow(self) -> asyncio.Queue[str]:
        """A queue receiving every new line until :meth:`unfollow`."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        self._followers.add(queue)
        return queue

    def unfollow(self, queue: asyncio.Queue[str]) -> None:
        self._followers.discard(queue)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
