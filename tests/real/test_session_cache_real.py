"""The session cache's components against the REAL llama-server and SmolLM2-135M-Instruct.

A session is saved from one llama-server process and restored into a fresh one; its next turn
must re-read only what is new. A changed window or model file discards the save; a corrupt
file is refused by the server and discarded; many sessions stay under the cap, oldest first.
Prompts are a few hundred tokens (this CPU reads ~50-100 tokens/s with one thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from swapper.sessions.cache import CacheSettings, ChildSessions, SessionCache
from swapper.sessions.keys import session_key
from swapper.sessions.verify import Verdict, timings_from
from swapper.upstream import UpstreamPool
from tests.conftest import Server, free_port, start_server, stop_server

pytestmark = pytest.mark.real
SYSTEM = ("You are a careful coding agent working in a Python repository. Read the files you are "
          "given, keep changes small, explain each change in one sentence, and never invent APIs. "
          "The repository has a package named swapper with modules for configuration, a solver, a "
          "scheduler, child processes, an upstream HTTP client and a proxy. Tests live under tests. ")


def conversation(topic: str, *turns: str) -> dict[str, Any]:
    """A chat body: the system text, a first user message about ``topic`` of about 250 tokens,
    then ``turns`` alternating assistant / user."""
    first = (f"Task about {topic}: " + "Look at the scheduler module and the solver module, "
             "then list what each public function does and which tests cover it. " * 5)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": first}]
    for at, text in enumerate(turns):
        messages.append({"role": "assistant" if at % 2 == 0 else "user", "content": text})
    return {"messages": messages}


def base_argv(binary: str, model: Path, ctx: int = 2048, parallel: int = 1) -> list[str]:
    return [binary, "-m", str(model), "--host", "127.0.0.1", "--port", "${PORT}", "-t", "1",
            "-c", str(ctx), "-np", str(parallel), "--no-warmup", "--jinja"]


class Events(list):
    def __call__(self, kind: str, **fields: Any) -> None:
        self.append((kind, fields))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [fields for k, fields in self if k == kind]


@dataclass
class Child:
    server: Server
    sessions: ChildSessions

    async def turn(self, body: dict[str, Any], max_tokens: int = 8) -> dict[str, Any]:
        """One request as the proxy will send it: pinned to the session's slot (after a
        restore on its first request), then judged."""
        session = session_key(None, body)
        slot = await self.sessions.before_request(session)
        payload = dict(body, temperature=0, max_tokens=max_tokens)
        if slot is not None:
            payload["id_slot"] = slot
        status, _, raw = await asyncio.to_thread(self.server.post, "/v1/chat/completions", payload, 300)
        if slot is not None:
            self.sessions.release(slot)
        assert status == 200, raw[:300]
        answer: dict[str, Any] = json.loads(raw)
        answer["verdict"] = self.sessions.after_response(session, timings_from(answer["timings"]))
        return answer


@contextlib.asynccontextmanager
async def child(cache: SessionCache, argv: list[str], log: Path, model_id: str = "smol"
                ) -> AsyncIterator[Child]:
    """A llama-server started as the manager will start it (the plan's extra argv added)."""
    plan = cache.plan(model_id, argv, {})
    assert plan is not None, cache.off
    port = free_port()
    full = [a.replace("${PORT}", str(port)) for a in argv] + list(plan.extra_argv)
    server = start_server(full, port, log, ready_path="/health", timeout=60)
    try:
        sessions = await plan.attach(server.base)
        assert sessions is not None, cache.off
        yield Child(server, sessions)
    finally:
        stop_server(server)


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    pool.close()


def new_cache(root: Path, pool: UpstreamPool, events: Events, max_bytes: int = 10**10) -> SessionCache:
    return SessionCache(CacheSettings(root, max_bytes, min_tokens=16), pool, events)


@dataclass
class Saved:
    root: Path
    argv: list[str]
    body: dict[str, Any]
    answer: str
    tokens: int


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """A copy of the model this module may touch (its mtime is part of the key)."""
    copy = tmp_path_factory.mktemp("model") / smollm2_gguf.name
    shutil.copy(smollm2_gguf, copy)
    return copy


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: str, model_copy: Path) -> Saved:
    """One session of about 300 tokens saved from a llama-server that was then stopped."""
    work = tmp_path_factory.mktemp("saved")
    argv = base_argv(llama_server_bin, model_copy)
    body = conversation("the scheduler")
    events = Events()

    async def run() -> str:
        pool = UpstreamPool()
        cache = new_cache(work / "sessions", pool, events)
        async with child(cache, argv, work / "first.log") as first:
            answer = await first.turn(body)
            assert await first.sessions.save_all() == 1
        cache.close()
        pool.close()
        return str(answer["choices"][0]["message"]["content"])

    answer = asyncio.run(run())
    [saved] = events.of("session_saved")
    return Saved(work / "sessions", argv, body, answer, int(saved["tokens"]))


def copy_of(saved: Saved, tmp_path: Path) -> Path:
    root = tmp_path / "sessions"
    shutil.copytree(saved.root, root)
    return root


async def test_a_session_survives_a_restart_of_its_child(saved: Saved, tmp_path: Path,
                                                         pool: UpstreamPool) -> None:
    events = Events()
    cache = new_cache(copy_of(saved, tmp_path), pool, events)
    body = conversation("the scheduler", saved.answer, "Now list the tests that cover it.")
    async with child(cache, saved.argv, tmp_path / "second.log") as second:
        answer = await second.turn(body)
    [restored] = events.of("session_restored")
    assert restored["tokens"] == saved.tokens > 200
    timings = answer["timings"]
    assert timings["cache_n"] >= saved.tokens - 1, timings
    assert timings["prompt_n"] < 40, timings  # only the new turn is read
    assert answer["verdict"] is Verdict.OK


async def test_without_the_saved_file_the_turn_rereads_everything(saved: Saved, tmp_path: Path,
                                                                  pool: UpstreamPool) -> None:
    """The control: the same turn in a fresh process with nothing to restore."""
    cache = new_cache(tmp_path / "empty", pool, Events())
    body = conversation("the scheduler", saved.answer, "Now list the tests that cover it.")
    async with child(cache, saved.argv, tmp_path / "control.log") as fresh:
        answer = await fresh.turn(body)
    assert answer["timings"]["cache_n"] == 0 and answer["timings"]["prompt_n"] > saved.tokens
    assert answer["verdict"] is None


@pytest.mark.parametrize("change", ["window", "model file"])
async def test_a_changed_window_or_model_file_discards_the_save(
        saved: Saved, tmp_path: Path, pool: UpstreamPool, model_copy: Path, change: str) -> None:
    events = Events()
    cache = new_cache(copy_of(saved, tmp_path), pool, events)
    argv = list(saved.argv)
    stat = os.stat(model_copy)
    if change == "window":
        argv[argv.index("-c") + 1] = "1536"
    else:
        os.utime(model_copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        body = conversation("the scheduler", saved.answer, "Now list the tests that cover it.")
        async with child(cache, argv, tmp_path / "changed.log") as changed:
            answer = await changed.turn(body)
    finally:
        os.utime(model_copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    [discarded] = events.of("session_discarded")
    assert discarded["tokens"] == saved.tokens
    expected = ("the settings changed (was -c 2048, now -c 1536)" if change == "window"
                else "the model file changed")
    assert discarded["reason"] == expected
    assert events.of("session_restored") == [] and answer["timings"]["cache_n"] == 0
    assert not any(cache.settings.root.glob("*/*.bin"))


async def test_a_corrupt_slot_file_is_refused_and_discarded(saved: Saved, tmp_path: Path,
                                                            pool: UpstreamPool) -> None:
    root = copy_of(saved, tmp_path)
    [slot_file] = root.glob("*/*.bin")
    size = slot_file.stat().st_size
    slot_file.write_bytes(b"ggsq" + os.urandom(size - 4))  # same size: the sidecar still matches
    events = Events()
    cache = new_cache(root, pool, events)
    body = conversation("the scheduler", saved.answer, "Now list the tests that cover it.")
    async with child(cache, saved.argv, tmp_path / "corrupt.log") as second:
        answer = await second.turn(body)
        assert second.server.get("/health")[0] == 200  # the server survived it
    [discarded] = events.of("session_discarded")
    assert discarded["reason"].startswith("the server refused it: POST /slots/0: 400")
    assert answer["timings"]["cache_n"] == 0 and not slot_file.exists()


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*")
               if p.is_file() and p.suffix in (".bin", ".json", ".tmp") and p.name != "key.json")


class CheckedEvents(Events):
    """Events, and the bytes on disk after each (saves, evictions): never over ``cap``."""

    def __init__(self, root: Path, cap: int) -> None:
        super().__init__()
        self.root, self.cap, self.over = root, cap, []

    def __call__(self, kind: str, **fields: Any) -> None:
        super().__call__(kind, **fields)
        if (used := disk_bytes(self.root)) > self.cap:
            self.over.append((kind, used))


async def test_the_cap_holds_with_many_sessions_and_the_oldest_go_first(
        tmp_path: Path, pool: UpstreamPool, llama_server_bin: str, model_copy: Path) -> None:
    argv = base_argv(llama_server_bin, model_copy, ctx=4096, parallel=4)
    root = tmp_path / "sessions"
    events = Events()
    cache = new_cache(root, pool, events)
    topics = [f"module number {i}" for i in range(6)]
    bodies = [{"messages": [{"role": "user", "content": f"Summarise {t} in one line."}]} for t in topics]
    async with child(cache, argv, tmp_path / "round1.log") as first:
        for body in bodies[:4]:  # used oldest first
            await first.turn(body, max_tokens=4)
        assert await first.sessions.save_all() == 4
    sizes = {f["session"]: f["bytes"] for f in events.of("session_saved")}
    order = [session_key(None, b)[:12] for b in bodies]  # type: ignore[index]
    cache.close()
    assert max(sizes.values()) < 1.1 * min(sizes.values())  # alike: the cap fits three
    cap = int(3.5 * max(sizes.values()))
    checked = CheckedEvents(root, cap)
    cache = new_cache(root, pool, checked, max_bytes=cap)
    async with child(cache, argv, tmp_path / "round2.log") as second:
        for body in bodies[4:]:
            await second.turn(body, max_tokens=4)
        assert await second.sessions.save_all() == 2
    evicted = [f["session"] for f in checked.of("session_discarded")]
    assert evicted == order[:3], "the oldest go first"
    assert {e.session[:12] for e in cache.store.entries()} == set(order[3:])
    assert checked.over == [] and len(checked) >= 5 and disk_bytes(root) <= cap
