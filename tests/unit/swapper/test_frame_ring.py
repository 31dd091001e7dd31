"""FrameRing: one bounded ring for every reader of a stream, each reader a cursor."""

from __future__ import annotations

import asyncio

import pytest

from swapper.events import Behind, FrameRing
from tests.conftest import until


def test_the_ring_keeps_at_most_its_frames_and_bytes_and_always_the_newest() -> None:
    ring = FrameRing(max_frames=3, max_bytes=10)
    for frame in (b"a", b"b", b"c", b"d"):
        ring.push(frame)
    assert (ring.start, ring.end) == (1, 4)
    assert ring.read(1, 100) == (b"bcd", 4)
    ring.push(b"x" * 50)  # larger than the whole ring: it alone stays
    assert (ring.start, ring.end) == (4, 5)
    assert ring.read(4, 100) == (b"x" * 50, 5)


def test_a_reader_behind_the_ring_is_told_and_a_read_stops_at_its_limit() -> None:
    ring = FrameRing(max_frames=4, max_bytes=1 << 20)
    cursor = ring.end
    for i in range(4):
        ring.push(b"%d" % i)
    assert ring.read(cursor, 2) == (b"01", 2)  # at least the limit, whole frames
    assert ring.read(4, 2) == (b"", 4)  # caught up
    ring.push(b"4")
    with pytest.raises(Behind):
        ring.read(cursor, 2)


def test_compaction_and_the_last_reader_leaving_keep_sequence_numbers() -> None:
    ring = FrameRing(max_frames=2, max_bytes=1 << 20)
    with ring.reader() as cursor:
        assert (cursor, ring.readers) == (0, 1)
        for i in range(1000):
            ring.push(b"%d," % i)
        assert ring.read(ring.start, 100) == (b"998,999,", 1000)
        assert len(ring._frames) <= 2 * 2 + 1  # compacted, not grown
    assert (ring.start, ring.end, ring.readers) == (1000, 1000, 0)  # frames forgotten
    with pytest.raises(Behind):
        ring.read(999, 10)


async def test_every_waiting_reader_wakes_at_the_next_push() -> None:
    ring = FrameRing()
    waiters = [asyncio.ensure_future(asyncio.shield(ring.more())) for _ in range(3)]
    waiters[0].cancel()  # a reader that left: the shared wake-up still works for the rest
    await until(waiters[0].cancelled, "the reader's wait cancelled")
    ring.push(b"x")
    await asyncio.wait_for(asyncio.gather(*waiters[1:]), 1)


async def test_closing_wakes_every_waiting_reader_and_ends_the_ring() -> None:
    ring = FrameRing()
    ring.push(b"last")
    waiters = [asyncio.ensure_future(asyncio.shield(ring.more())) for _ in range(2)]
    ring.close()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    ring.push(b"after")  # nothing comes after the end: a reader reaches it
    assert ring.closed and ring.read(0, 100) == (b"last", 1) and ring.end == 1


async def test_a_quiet_feed_sends_keepalive_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from swapper import status_api
    from swapper.events import EventBus, Listeners

    monkeypatch.setattr(status_api, "KEEPALIVE", 0.1)
    feed = status_api.LiveFeed(SimpleNamespace(bus=EventBus(), log_listeners=Listeners()))
    with feed.reader() as cursor:
        await asyncio.wait_for(asyncio.shield(feed.ring.more()), 5)
        assert feed.ring.read(cursor, 100) == (b": keepalive\n\n", cursor + 1)
    assert feed._tick is None  # the last reader left: no timer
