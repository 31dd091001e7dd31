"""A child's log: lines as they complete, one file write per block, rotation, followers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from swapper import logring
from swapper.logring import LogSink


class CountingFile:
    """A real file that counts the writes reaching it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.writes = inner, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        return int(self.inner.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.close()


def test_the_lines_one_block_completes_reach_the_file_in_one_write(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[CountingFile] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(CountingFile(real_open(self, *args, **kwargs)))
        return opened[-1]

    monkeypatch.setattr(Path, "open", counting_open)
    sink = LogSink("m", tmp_path / "m.log")
    expected = [f"slot print_timing: line {i}" for i in range(9)] + ["half a line, and more"]
    with sink.live.reader() as cursor:  # a follower
        block = b"".join(b"slot print_timing: line %d\n" % i for i in range(9))
        assert sink.feed(block + b"half a li")  # nine lines (llama-server's per request), a part
        assert opened[0].writes == 1
        assert not sink.feed(b"ne, and more")
        sink.flush()
        sink.close()
        assert sink.live.read(cursor, 1 << 20)[0].decode().splitlines() == expected
    assert (tmp_path / "m.log").read_text().splitlines() == expected
    assert list(sink.lines) == expected
    assert sink.live.readers == 0 and sink.live.start == len(expected)  # forgotten, counted


def test_the_file_rotates_past_its_cap_and_keeps_the_newest(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logring, "MAX_FILE_BYTES", 100)
    path = tmp_path / "m.log"
    path.write_bytes(b"x" * 90 + b"\n")  # a log from an earlier start counts toward the cap
    sink = LogSink("m", path)
    sink.feed(b"0123456789\n")  # 91 + 11 bytes: over the cap
    sink.write("after")
    sink.close()
    assert path.with_name("m.log.1").read_bytes() == b"x" * 90 + b"\n0123456789\n"
    assert path.read_text() == "after\n"


def test_a_long_line_is_cut_with_a_note(tmp_path: Path) -> None:
    sink = LogSink("m", tmp_path / "m.log")
    sink.feed(b"a" * (logring.MAX_LINE_BYTES + 5) + b"\n")
    sink.close()
    assert list(sink.lines) == ["a" * logring.MAX_LINE_BYTES + " [... 5 bytes cut]"]


def test_a_followers_history_goes_out_in_bounded_pieces() -> None:
    from swapper.http_app import _pieces

    lines = ["x" * 16384] * 5 + ["short", "é"]
    pieces = list(_pieces(lines, 20000))
    assert b"".join(pieces).decode().splitlines() == lines
    assert [len(p) for p in pieces] == [2 * 16385, 2 * 16385, 16385 + 6 + 3]  # é: 2 bytes
    assert list(_pieces([], 10)) == []
