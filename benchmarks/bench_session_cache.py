"""Issue 21: a returning agent turn after a swap-back, with and without the session cache.

The REAL llama-server (``-t 1``) and SmolLM2-135M-Instruct (the ``smollm2_gguf`` fixture).
For each session size (~2k and ~6k tokens of context):

1. ``first``: a server reads the whole conversation once; its slot is then saved
   (``save_all``: the time a swap gains from saving, and the bytes on disk) and the server
   stopped, as the manager will on an eviction;
2. ``restored``: a fresh server (the swap-back), the session's next turn restored lazily on
   its first request: load (spawn -> /health), restore, time to the first token;
3. ``re-read``: a fresh server without the cache, the same turn: it re-reads everything.

Goals (issue 21): the returning turn >= 10x faster than re-reading at ~6k tokens; tokens re-read
after a restore <= 5 % of the prompt. Nothing here asserts a timing (see conftest).

It drives llama-server directly with ``swapper.sessions`` (the :class:`Direct` driver). Once
the manager and proxy are wired, a driver that runs ``llmstack serve`` with
``session_cache = on`` / ``off`` and swaps with another tier can replace it: the scenario only
needs ``start`` / ``turn`` / ``stop``. Run::

    python -m pytest benchmarks/bench_session_cache.py -p no:cacheprovider --benchmark-only -k 2k
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from conftest import ms, record

from swapper.sessions.cache import CacheSettings, ChildSessions, SessionCache
from swapper.sessions.keys import session_key
from swapper.sessions.verify import TimingsTap
from swapper.upstream import UpstreamPool
from tests.conftest import Server, free_port, start_server, stop_server

TITLE = "session cache: returning turn after a swap-back (ms)"
SIZES = {"2k": 2000, "6k": 6000}
pytestmark = pytest.mark.timeout(1800)


def conversation(tokens: int) -> dict[str, Any]:
    """An agent-like conversation of about ``tokens`` tokens (this text: ~2.7 characters each)."""
    rules = " ".join(f"Rule {i}: keep function number {i} small, typed and tested." for i in range(40))
    history: list[dict[str, str]] = [{"role": "system", "content": "You are a coding agent. " + rules}]
    step = 0
    while sum(len(m["content"]) for m in history) < tokens * 2.7:
        history.append({"role": "user", "content": f"Step {step}: read module_{step}.py and report. "
                        + " ".join(f"Line {j} of module {step} defines helper_{step}_{j}()."
                                   for j in range(20))})
        history.append({"role": "assistant", "content": f"Module {step} has 20 helpers; all typed."})
        step += 1
    history.append({"role": "user", "content": "Summarise what you found."})
    return {"messages": history}


def next_turn(body: dict[str, Any], answer: str) -> dict[str, Any]:
    return {"messages": [*body["messages"], {"role": "assistant", "content": answer},
                         {"role": "user", "content": "Which module should we refactor first?"}]}


@dataclass
class Turn:
    first_token_s: float
    total_s: float
    text: str
    cache_n: int
    prompt_n: int
    restore_s: float = 0.0


class Driver(Protocol):
    """What the scenario needs from the thing under test (llama-server direct, later the stack)."""

    async def start(self) -> float: ...
    async def turn(self, body: dict[str, Any]) -> Turn: ...
    async def stop(self, save: bool) -> float: ...


class Direct:
    """llama-server started from a plan of :class:`SessionCache` (or without one)."""

    def __init__(self, binary: str, model: Path, work: Path, cache: SessionCache | None) -> None:
        self.argv = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", "${PORT}", "-t", "1",
                     "-c", "8192", "-np", "1", "--no-warmup", "--jinja"]
        self.work, self.cache = work, cache
        self.server: Server | None = None
        self.sessions: ChildSessions | None = None

    async def start(self) -> float:
        """Spawn -> /health 200 (seconds)."""
        plan = self.cache.plan("smol", self.argv, {}) if self.cache is not None else None
        port = free_port()
        argv = [a.replace("${PORT}", str(port)) for a in self.argv] + list(plan.extra_argv if plan else ())
        started = time.monotonic()
        self.server = await asyncio.to_thread(start_server, argv, port, self.work / f"server-{port}.log",
                                              None, "/health", 60)
        loaded = time.monotonic() - started
        self.sessions = await plan.attach(self.server.base) if plan is not None else None
        return loaded

    async def turn(self, body: dict[str, Any]) -> Turn:
        """The proxy's part (pin, lazy restore, verify) and a streamed request."""
        assert self.server is not None
        session = session_key(None, body)
        started = time.monotonic()
        slot = await self.sessions.before_request(session) if self.sessions is not None else None
        restore_s = time.monotonic() - started
        payload = dict(body, stream=True, max_tokens=8, temperature=0)
        if slot is not None:
            payload["id_slot"] = slot
        tap, text, first = TimingsTap(), [], 0.0
        async with aiohttp.ClientSession() as http, http.post(
                self.server.base + "/v1/chat/completions", json=payload,
                timeout=aiohttp.ClientTimeout(total=1200)) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                tap.feed(line)
                if line.startswith(b"data: {"):
                    delta = json.loads(line[6:])["choices"]
                    if delta and delta[0]["delta"].get("content"):
                        first = first or time.monotonic() - started
                        text.append(delta[0]["delta"]["content"])
        timings = tap.timings()
        assert timings is not None
        if self.sessions is not None:
            if slot is not None:
                self.sessions.release(slot)
            self.sessions.after_response(session, timings)
        return Turn(first, time.monotonic() - started, "".join(text), timings.cache_n, timings.prompt_n,
                    restore_s)

    async def stop(self, save: bool) -> float:
        """Save (as the manager will before a stop) and stop; returns the save's seconds."""
        assert self.server is not None
        started = time.monotonic()
        if save and self.sessions is not None:
            await self.sessions.save_all()
        saved = time.monotonic() - started
        stop_server(self.server)
        return saved


class Events(list):
    def __call__(self, kind: str, **fields: Any) -> None:
        self.append((kind, fields))


@pytest.fixture
def rig(tmp_path: Path, llama_server_bin: str, smollm2_gguf: Path) -> Iterator[tuple[str, Path, Path]]:
    yield llama_server_bin, smollm2_gguf, tmp_path


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    pool.close()


async def scenario(binary: str, model: Path, work: Path, pool: UpstreamPool, tokens: int) -> dict[str, Any]:
    events = Events()
    cache = SessionCache(CacheSettings(work / "sessions", 10**10, min_tokens=1), pool, events)
    body = conversation(tokens)
    first = Direct(binary, model, work, cache)
    await first.start()
    turn1 = await first.turn(body)
    save_s = await first.stop(save=True)
    [saved] = [f for k, f in events if k == "session_saved"]
    returning = next_turn(body, turn1.text)

    back = Direct(binary, model, work, cache)  # the swap-back, with the session cache
    load_s = await back.start()
    restored = await back.turn(returning)
    await back.stop(save=False)

    plain = Direct(binary, model, work, None)  # the same without it
    plain_load_s = await plain.start()
    reread = await plain.turn(returning)
    await plain.stop(save=False)
    verdicts = [f["verdict"] for k, f in events if k == "session_verified"]
    return {
        "session_tokens": saved["tokens"], "disk_bytes": saved["bytes"], "save_ms": ms(save_s),
        "first_read_ms": ms(turn1.first_token_s),
        "load_ms": ms(load_s), "restore_ms": ms(restored.restore_s),
        "ttft_restored_ms": ms(restored.first_token_s), "cache_n": restored.cache_n,
        "prompt_n": restored.prompt_n,
        "reread_share": round(restored.prompt_n / (restored.cache_n + restored.prompt_n), 4),
        "load_plain_ms": ms(plain_load_s), "ttft_reread_ms": ms(reread.first_token_s),
        "reread_prompt_n": reread.prompt_n,
        "speedup": round(reread.first_token_s / restored.first_token_s, 1), "verdicts": verdicts,
    }


@pytest.mark.parametrize("size", list(SIZES))
def test_returning_turn_after_swap_back(benchmark: Any, rig: tuple[str, Path, Path], size: str) -> None:
    binary, model, work = rig
    figures: dict[str, Any] = {}

    def run() -> None:
        async def go() -> None:
            pool = UpstreamPool()
            try:
                figures.update(await scenario(binary, model, work / f"r{len(figures)}", pool, SIZES[size]))
            finally:
                pool.close()
        asyncio.run(go())

    benchmark.group = TITLE
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert figures["verdicts"] == ["ok"], figures
    assert figures["cache_n"] >= figures["session_tokens"] - 1, figures
    benchmark.extra_info.update(figures)
    record(TITLE, size, **{k: v for k, v in figures.items() if k != "verdicts"})
