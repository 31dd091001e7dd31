"""A child's output: read as it comes while the model loads, in batches once it serves."""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace

import pytest

from swapper import process
from swapper.config import ModelSpec
from swapper.logring import LogSink
from swapper.process import UpstreamProcess
from tests.conftest import until

pytestmark = pytest.mark.timeout(10)


async def test_a_serving_childs_lines_cost_one_read_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "LOG_BATCH", 3600.0)  # a pause ends only when the test says
    log = LogSink("m")
    reads: list[bytes] = []
    feed = log.feed
    monkeypatch.setattr(log, "feed", lambda block: reads.append(block) or feed(block))
    child = UpstreamProcess(ModelSpec(id="m", cmd=("srv",)), None, log, 5.0, lambda _: None)
    out, into = os.pipe()
    child._popen = SimpleNamespace(stdout=os.fdopen(out, "rb", buffering=0), pid=0)  # type: ignore[assignment]
    pump = asyncio.ensure_future(child._pump_output())
    try:
        for n, line in enumerate([b"loading\n", b"model loaded\n"], start=1):  # as they come
            os.write(into, line)
            await until(lambda n=n: len(log.lines) == n, f"line {n} read")
        child.ready_at = time.monotonic()  # ready: what it prints just after is read at once
        os.write(into, b"listening\n")
        await until(lambda: len(log.lines) == 3, "a line just after readiness")
        child.ready_at -= process.LOG_SETTLED  # serving for a while now
        os.write(into, b"request 1\n")  # read, then the pause begins in the same step
        await until(lambda: len(log.lines) == 4, "the line before the first batch pause")
        for i in range(9):  # a request's lines, written apart as llama-server does
            os.write(into, b"slot print_timing: %d\n" % i)
        for _ in range(100):
            await asyncio.sleep(0)
        assert len(log.lines) == 4 and len(reads) == 4  # paused: the lines wait in the pipe
        child._exited.set()  # the child's exit ends the pause
        await until(lambda: len(log.lines) == 13, "the nine lines read")
        assert len(reads) == 5 and reads[-1].count(b"\n") == 9
    finally:
        os.close(into)
        child._exited.set()
        await asyncio.wait_for(pump, 5)
