"""Fairness with real children: steady traffic on one model does not starve another."""

from __future__ import annotations

import asyncio
import json
import math
import time

import aiohttp

from tests.conftest import eventually, fake_cmd

CHAT = "/v1/chat/completions"
LIMIT = 1.0  # maxQueueWait for the test
TRAFFIC_FOR = 20.0  # how long the agent traffic would go on if nothing held it
CLIENTS = 16
STREAM_S = 0.5  # each agent stream: 50 chunks 10 ms apart


async def _scenario(base: str) -> tuple[float, float, int]:
    """CLIENTS clients stream to 'agent' back to back; one request for 'plan' arrives meanwhile.

    Returns (plan's latency, the longest agent request, agent requests served).
    """
    stop = asyncio.Event()
    served: list[float] = []

    async def stream(session: aiohttp.ClientSession, model: str) -> float:
        started = time.monotonic()
        async with session.post(base + CHAT, json={"model": model, "stream": True,
                                                   "messages": []}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.read()
            assert body.rstrip().endswith(b"data: [DONE]")
        return time.monotonic() - started

    async with aiohttp.ClientSession() as session:
        await stream(session, "agent")  # resident and warm

        async def agent_client(nth: int) -> None:
            await asyncio.sleep(nth * STREAM_S / CLIENTS)  # load shaping: staggered, never idle
            while not stop.is_set():
                served.append(await stream(session, "agent"))

        clients = [asyncio.ensure_future(agent_client(n)) for n in range(CLIENTS)]
        await eventually(lambda: len(served) >= 12, 60, "steady traffic before plan arrives")
        try:
            plan = await asyncio.wait_for(stream(session, "plan"), TRAFFIC_FOR)
        except asyncio.TimeoutError:
            plan = math.inf  # starved for as long as the traffic went on
        finally:
            stop.set()
            await asyncio.gather(*clients)
    return plan, max(served), len(served)


def test_a_waiting_model_is_served_within_the_limit_plus_one_drain(swapper) -> None:
    agent = fake_cmd("--chunks", "50", "--chunk-ms", "10")
    server = swapper(f"maxQueueWait: {LIMIT}\nmodels:\n"
                     f"  agent:\n    cmd: {agent}\n    concurrencyLimit: 64\n"
                     f"  plan:\n    cmd: {fake_cmd()}\n")
    plan, drain, agent_requests = asyncio.run(_scenario(server.base))
    events = json.loads(server.get("/events")[2])
    load = next((e["ms"] for e in events if e["kind"] == "model_ready" and e["model"] == "plan"),
                0.0) / 1000
    assert agent_requests > 12
    # limit + one drain + the swap itself, with slack for a shared 2-core box
    assert plan < LIMIT + drain + load + 1.5, (plan, drain, load)

