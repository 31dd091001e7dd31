"""How late the swapper notices that a real llama-server can serve (readiness notice lag).

A fresh ``UpstreamProcess`` per round (the tiny model, ``-t 1 -c 1024 --no-warmup``);
a thread polls ``/health`` every 0.3 ms on its own, and the lag is ``wait_ready``'s
return minus the first 200 that thread saw (negative when the thread was
scheduled later than the swapper's own poll).
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import p50, record

from swapper.config import ModelSpec
from swapper.logring import LogSink
from swapper.process import UpstreamProcess
from swapper.upstream import UpstreamPool
from tests.conftest import free_port

ROUNDS = 20

pytestmark = pytest.mark.timeout(300)


def _first_200(port: int, seen: list[float], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                seen.append(time.monotonic())
                return
        except OSError:
            pass
        time.sleep(0.0003)


async def _rounds(binary: str, model: Path) -> tuple[list[float], list[float]]:
    pool = UpstreamPool()
    lags, totals = [], []
    for _ in range(ROUNDS):
        port = free_port()
        spec = ModelSpec(id="t", proxy="http://127.0.0.1:${PORT}",
                         cmd=(binary, "-m", str(model), "--host", "127.0.0.1", "--port", "${PORT}",
                              "-t", "1", "-c", "1024", "--no-warmup"))
        process = UpstreamProcess(spec, port, LogSink("t"), 30, lambda _: None)
        seen: list[float] = []
        stop = threading.Event()
        start = time.monotonic()
        process.spawn()
        poller = threading.Thread(target=_first_200, args=(port, seen, stop))
        poller.start()
        await process.wait_ready(pool)
        noticed = time.monotonic()
        stop.set()
        poller.join()
        if seen:
            lags.append((noticed - seen[0]) * 1e3)
            totals.append((noticed - start) * 1e3)
        await process.stop()
    return lags, totals


def test_readiness_notice_lag(benchmark: Any, tmp_path: Path, llama_server_bin: str) -> None:
    from llmstack.models.tiny_gguf import write_tiny_gguf

    binary = llama_server_bin
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    result: list[tuple[list[float], list[float]]] = []
    benchmark.group = "readiness"
    benchmark.pedantic(lambda: result.append(asyncio.run(_rounds(binary, model))),
                       rounds=1, iterations=1)
    lags, totals = result[0]
    info = {"notice_lag_p50_ms": round(p50(lags), 2), "notice_lag_max_ms": round(max(lags), 2),
            "spawn_to_ready_p50_ms": round(p50(totals), 1), "rounds": len(lags)}
    benchmark.extra_info.update(info)
    record("readiness: wait_ready vs the first /health 200", "swapper", **info)
