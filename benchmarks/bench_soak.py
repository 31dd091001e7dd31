"""Soak: 32 concurrent streams for 30 s through ``python -m swapper`` while models swap.

Two models that cannot run together (``a`` and ``b``, each the fast fake
upstream); 28 clients stream to ``a`` and 4 to ``b`` back to back, so ``b``'s
requests wait, become overdue after ``maxQueueWait`` (1 s here) and force a
swap every few seconds. It stops by itself after ``SOAK_SECONDS`` (default 30).

Asserts: every stream answered 200 and ended with ``[DONE]`` (zero unexpected
errors), swaps happened, and the swapper's RSS and open file descriptors are
flat: idle after the soak within a small slack of idle before it, and RSS late
in the soak within a slack of RSS early in it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from conftest import proc_status_kb, record

from tests.conftest import fake_cmd, free_port, start_server, stop_server, wait_until

SECONDS = float(os.environ.get("SOAK_SECONDS", "30"))
CLIENTS = 32
B_CLIENTS = 4
RSS_SLACK_MB = 8.0
FD_SLACK = 8


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    return proc_status_kb(pid, "VmRSS") / 1024


async def soak(base: str, pid: int) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    samples: list[tuple[float, float, int]] = []  # (elapsed, rss MB, fds)
    deadline = time.monotonic() + SECONDS
    connector = aiohttp.TCPConnector(limit=CLIENTS)

    async def client(model: str) -> None:
        body = json.dumps({"model": model, "stream": True, "messages": []}).encode()
        while time.monotonic() < deadline:
            async with session.post(base + "/v1/chat/completions", data=body,
                                    headers={"content-type": "application/json"}) as resp:
                data = await resp.read()
                ok = resp.status == 200 and data.rstrip().endswith(b"data: [DONE]")
                key = "ok" if ok else f"{resp.status}: {data[-200:]!r}"
                outcomes[key] = outcomes.get(key, 0) + 1

    async def sampler() -> None:
        started = time.monotonic()
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - started, rss_mb(pid), fds(pid)))
            await asyncio.sleep(1.0)  # a sampling period, not synchronisation

    async with aiohttp.ClientSession(connector=connector) as session:
        models = ["b"] * B_CLIENTS + ["a"] * (CLIENTS - B_CLIENTS)
        await asyncio.gather(sampler(), *(client(m) for m in models))
    return {"outcomes": outcomes, "samples": samples}


def test_soak_32_streams_with_swaps(benchmark: Any, tmp_path: Path) -> None:
    fake = fake_cmd("--chunks", "16", "--chunk-ms", "2")
    config = tmp_path / "soak.yaml"
    config.write_text(f"maxQueueWait: 1\nmodels:\n"
                      f"  a:\n    cmd: {fake}\n    concurrencyLimit: 64\n"
                      f"  b:\n    cmd: {fake}\n    concurrencyLimit: 64\n")
    port = free_port()
    server = start_server([sys.executable, "-m", "swapper", "-c", str(config), "--listen",
                           f"127.0.0.1:{port}", "--runtime-dir", str(tmp_path / "run")],
                          port, tmp_path / "swapper.log")
    try:
        pid = server.popen.pid
        assert server.post("/v1/chat/completions", {"model": "a", "messages": []})[0] == 200
        idle_before = (rss_mb(pid), fds(pid))
        result: dict[str, Any] = {}

        def run() -> None:
            result.update(asyncio.run(soak(server.base, pid)))

        benchmark.group = "soak"
        benchmark.pedantic(run, rounds=1, iterations=1)
        # idle again: pooled upstream connections close once the children they reach stop
        assert server.post("/unload")[0] == 200
        wait_until(lambda: fds(pid) <= idle_before[1] + FD_SLACK, 10, "fds back to idle")
        idle_after = (rss_mb(pid), fds(pid))
        events = json.loads(server.get("/events")[2])
    finally:
        stop_server(server)

    outcomes, samples = result["outcomes"], result["samples"]
    swaps = sum(1 for e in events if e["kind"] == "swap_started")
    third = max(1, len(samples) // 3)
    early = max(s[1] for s in samples[:third])
    late = max(s[1] for s in samples[-third:])
    row = {"streams_ok": outcomes.get("ok", 0), "errors": sum(outcomes.values()) - outcomes.get("ok", 0),
           "swaps": swaps, "rss_idle_before_mb": round(idle_before[0], 1),
           "rss_idle_after_mb": round(idle_after[0], 1), "rss_early_mb": round(early, 1),
           "rss_late_mb": round(late, 1), "fds_idle_before": idle_before[1],
           "fds_idle_after": idle_after[1], "fds_peak": max(s[2] for s in samples)}
    record("soak: 32 streams with swaps", f"{SECONDS:g} s", **row)
    benchmark.extra_info.update(row)
    assert set(outcomes) == {"ok"}, outcomes
    assert swaps >= 4
    assert late - early <= RSS_SLACK_MB, row
    assert idle_after[0] - idle_before[0] <= RSS_SLACK_MB * 2, row
    assert idle_after[1] <= idle_before[1] + FD_SLACK, row
