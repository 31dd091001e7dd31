"""The session cache wired into the manager and the proxy, in process: each child is the slot
stand-in (``slot_standin.py``) served by this process, each request goes through the swapper's
ASGI app. Every way a model stops saves its sessions (a swap, TTL, unload, a reconfigure that
restarts it, shutdown; a crash has nothing to save), the proxy pins a session's requests to its
slot, restores on the session's first request and judges the restore."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from swapper.config import ModelSpec, SessionCacheConfig, SwapperConfig
from swapper.events import Event, EventBus
from swapper.http_app import SwapperApp
from swapper.identity import Identity
from swapper.logring import LogSink
from swapper.manager import Manager
from swapper.scheduler import Status
from swapper.sessions.keys import session_key
from swapper.upstream import UpstreamPool
from tests.conftest import eventually
from tests.slot_standin import SlotStandIn

pytestmark = pytest.mark.timeout(30)
_pids = itertools.count(5000)
CHAT = "/v1/chat/completions"
PYTHON = str(Path(sys.executable).resolve())  # the stand-ins' "binary"


class StandInChild:
    """A model's process: the slot stand-in in this process, saving where the manager's
    ``--slot-save-path`` says. ``World`` chooses how it behaves."""

    def __init__(self, world: World, spec: ModelSpec, port: int | None, log: LogSink,
                 health_timeout: float, on_exit: Callable[[Any], None],
                 private_env: frozenset[str]) -> None:
        self.world, self.spec, self.port, self._on_exit = world, spec, port, on_exit
        self.argv = list(spec.cmd)
        save = Path(self.argv[self.argv.index("--slot-save-path") + 1]) if (
            "--slot-save-path" in self.argv) else None
        self.standin = SlotStandIn(save, slots=world.slots, **world.options)
        self.base_url = ""
        self.ready_at = 0.0
        self.pid: int | None = None
        self.returncode: int | None = None
        world.children.append(self)

    def spawn(self) -> Identity:
        self.pid = next(_pids)
        return Identity(self.pid, 0.0)

    async def wait_ready(self, http: UpstreamPool) -> None:
        self.base_url = await self.standin.start()
        self.ready_at = self.world.now

    async def stop(self) -> None:
        if self.returncode is None:
            await self.standin.stop()
            self.exit(-15)

    def exit(self, code: int) -> None:
        self.returncode = code
        self._on_exit(self)


class World:
    """Stand-in children, a fake clock, the events, and a manager and app over them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.children: list[StandInChild] = []
        self.now = 100.0
        self.slots = 1
        self.options: dict[str, Any] = {}
        self.events: list[Event] = []
        model = tmp_path / "model.gguf"
        model.write_bytes(b"GGUF")
        self.model_file = model

    def spec(self, model: str, *flags: str, **kw: Any) -> ModelSpec:
        """A child command the session cache takes part in: a real binary and model file."""
        return ModelSpec(id=model, cmd=(sys.executable, "-m", str(self.model_file), "--port",
                                        "${PORT}", *flags), session_cache=True, **kw)

    def config(self, *specs: ModelSpec, **kw: Any) -> SwapperConfig:
        """One model at a time (a request for another swaps)."""
        return SwapperConfig(models={s.id: s for s in specs}, start_port=7000,
                             session_cache=SessionCacheConfig(str(self.tmp / "sessions"), 10**9, 1),
                             **kw)

    def manager(self, config: SwapperConfig) -> Manager:
        bus = EventBus()
        bus.subscribe(self.events.append)
        return Manager(config, bus, process_factory=lambda *a: StandInChild(self, *a),
                       clock=lambda: self.now)

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [e.fields for e in self.events if e.kind == kind
                and all(e.fields.get(k) == v for k, v in match.items())]

    def kinds(self, model: str) -> list[str]:
        return [e.kind for e in self.events if e.fields.get("model") == model]

    def child(self, model: str, nth: int = -1) -> StandInChild:
        return [c for c in self.children if c.spec.id == model][nth]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    world = World(tmp_path)
    yield world
    for child in world.children:
        await child.standin.stop()


def conversation(*turns: str, system: str = "You are a coding agent.") -> dict[str, Any]:
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": "Read the scheduler and report. " * 20}]
    for at, text in enumerate(turns):
        messages.append({"role": "assistant" if at % 2 == 0 else "user", "content": text})
    return {"messages": messages, "max_tokens": 4}


async def call(app: SwapperApp, model: str, body: dict[str, Any], path: str = CHAT,
               headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[int, dict[str, Any]]:
    """One request through the app's ASGI interface; (status, JSON answer)."""
    raw = json.dumps({"model": model, **body}).encode()
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [(b"host", b"127.0.0.1"),
                                              (b"content-type", b"application/json"), *headers],
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1), "scheme": "http",
             "http_version": "1.1"}
    fed = False

    async def receive() -> dict[str, Any]:
        nonlocal fed
        if not fed:
            fed = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError

    out: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await app.serve_http(scope, receive, send, app.router)
    status = next(m["status"] for m in out if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in out
                                       if m["type"] == "http.response.body"))


async def served(world: World, *specs: ModelSpec, **kw: Any) -> tuple[Manager, SwapperApp]:
    manager = world.manager(world.config(*specs, **kw))
    app = SwapperApp(manager)
    await app.startup()
    return manager, app


async def test_a_swap_saves_the_session_and_its_return_restores_it(world: World) -> None:
    manager, app = await served(world, world.spec("a"), world.spec("b"))
    first = conversation()
    assert (await call(app, "a", first))[0] == 200
    a1 = world.child("a")
    assert a1.standin.chats[-1]["id_slot"] == 0  # pinned
    assert (await call(app, "b", conversation(system="other")))[0] == 200  # the swap
    [saved] = world.of("session_saved", model="a")
    assert saved["tokens"] > 100 and saved["session"] == session_key(None, first)[:12]
    stopping = [e.kind for e in world.events].index("model_stopping")
    assert [e.kind for e in world.events][stopping:stopping + 3] == [
        "model_stopping", "session_saved", "model_stopped"]  # the save is inside the stop

    status, answer = await call(app, "a", conversation("It has three parts.", "And its tests?"))
    assert status == 200
    [restored] = world.of("session_restored", model="a")
    assert restored["tokens"] == saved["tokens"]
    assert answer["timings"]["cache_n"] == saved["tokens"]
    [verified] = world.of("session_verified", model="a")
    assert verified["verdict"] == "ok"
    state = manager.session_status()
    assert state is not None and state["sessions"] == 2 and state["held"] == {"a": 1}
    metrics = app.status_api.metrics.render().decode()
    assert f'swapper_session_tokens_restored_total{{model="a"}} {saved["tokens"]}.0' in metrics
    assert 'swapper_session_restores_total{model="a",verdict="ok"} 1.0' in metrics
    gauges = dict(line.split(" ") for line in metrics.splitlines()
                  if line.startswith("swapper_session_cache_"))
    assert {name: float(value) for name, value in gauges.items()} == {
        "swapper_session_cache_bytes": state["bytes"], "swapper_session_cache_sessions": 2,
        "swapper_session_cache_max_bytes": state["max_bytes"]}  # bytes on disk, read when scraped
    await app.shutdown()


async def test_every_kind_of_stop_saves_and_a_crash_has_nothing_to_save(world: World) -> None:
    manager, app = await served(world, world.spec("a", ttl=60.0), world.spec("b"))
    body = conversation()

    async def turn(*more: str) -> None:
        assert (await call(app, "a", conversation(*more)))[0] == 200

    async def stopped_saving(reason: str) -> None:
        """a stops for ``reason``, saving its session between ``model_stopping`` and
        ``model_stopped``."""
        await eventually(lambda: world.of("model_stopped", model="a", reason=reason), 10.0,
                         f"a stopped ({reason})")
        kinds = world.kinds("a")
        at = len(kinds) - 1 - kinds[::-1].index("model_stopping")
        assert kinds[at:at + 3] == ["model_stopping", "session_saved", "model_stopped"]
        assert world.of("model_stopping", model="a")[-1]["reason"] == reason

    await turn()
    await manager.unload("a")
    await stopped_saving("unload")

    await turn("x", "y")  # restored, then a longer conversation to save
    world.now += 61
    manager.expire_idle()
    await stopped_saving("ttl")

    await turn("x", "y", "z", "w")
    manager.reconfigure(world.config(world.spec("a", "--temp", "0.3", ttl=60.0), world.spec("b")))
    await stopped_saving("reconfigure")
    await eventually(lambda: manager.scheduler.status["a"] is Status.READY, 10.0, "a restarted")
    assert "--temp" in world.child("a").argv  # a neutral flag: the same key, nothing discarded
    assert world.of("session_discarded") == []

    await turn("x", "y", "z", "w", "v", "u")
    saves = len(world.of("session_saved"))
    world.child("a").exit(1)  # a crash
    await eventually(lambda: manager.scheduler.status["a"] is Status.STOPPED, 10.0, "a gone")
    assert "a" not in manager.sessions and len(world.of("session_saved")) == saves

    await turn("x", "y", "z", "w", "v", "u", "t", "s")
    await app.shutdown()
    assert world.kinds("a")[-1] == "session_saved" and len(world.of("session_saved")) == saves + 1
    assert manager.session_cache is not None and not manager.session_cache.store.is_open
    assert body  # the same session throughout: one file
    assert len(list((world.tmp / "sessions").glob("*/*.bin"))) == 1


async def test_a_reload_that_changes_the_window_discards_the_saved_sessions(world: World) -> None:
    manager, app = await served(world, world.spec("a", "-c", "4096"))
    assert (await call(app, "a", conversation()))[0] == 200
    manager.reconfigure(world.config(world.spec("a", "-c", "2048")))
    await eventually(lambda: len(world.of("session_discarded")) == 1, 10.0, "the old window's save discarded")
    [discarded] = world.of("session_discarded")
    assert discarded["reason"] == "the settings changed (was -c 4096, now -c 2048)"
    await eventually(lambda: manager.scheduler.status["a"] is Status.READY, 10.0, "a restarted")
    assert (await call(app, "a", conversation("x", "y")))[0] == 200
    assert world.of("session_restored") == []
    await app.shutdown()


async def test_a_lower_cap_on_reload_evicts_at_once_oldest_first(world: World) -> None:
    world.slots = 3
    manager, app = await served(world, world.spec("a"))
    for system in ("one", "two", "three"):
        assert (await call(app, "a", conversation(system=system)))[0] == 200
        world.now += 1
    await manager.unload("a")
    sizes = [f["bytes"] for f in world.of("session_saved")]
    assert len(sizes) == 3
    cache = manager.session_cache
    assert cache is not None
    lower = replace(world.config(world.spec("a")),
                    session_cache=SessionCacheConfig(str(world.tmp / "sessions"), sum(sizes) - 1, 1))
    manager.reconfigure(lower)
    [evicted] = world.of("session_discarded")
    assert evicted["session"] == session_key(None, conversation(system="one"))[:12]
    assert cache.store.used <= sum(sizes) - 1 and cache.status()["max_bytes"] == sum(sizes) - 1
    await app.shutdown()


async def test_the_shutdown_saves_within_its_budget(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("swapper.manager.SESSION_SHUTDOWN_BUDGET", 0.3)
    world.options = {"save_delay": 30.0}  # a save that would hang the shutdown
    _, app = await served(world, world.spec("a"))
    assert (await call(app, "a", conversation()))[0] == 200
    started = time.monotonic()
    await app.shutdown()
    assert time.monotonic() - started < 3
    [failed] = world.of("session_save_failed", model="a")
    assert failed["reason"].startswith("POST /slots/0: no answer within 0.")


async def test_pinning_what_is_forced_and_what_is_left_to_the_server(world: World) -> None:
    world.slots = 2
    _, app = await served(world, world.spec("a"))
    body = conversation()
    assert (await call(app, "a", body))[0] == 200
    chats = world.child("a").standin.chats
    assert chats[-1]["id_slot"] == 0
    assert (await call(app, "a", {**body, "id_slot": 1}))[0] == 200  # the client's own slot wins
    assert chats[-1]["id_slot"] == 1
    other = conversation(system="another session")
    assert (await call(app, "a", other))[0] == 200
    assert chats[-1]["id_slot"] == 1  # the next free slot
    headers = ((b"x-session-id", b"ses_1"),)
    assert (await call(app, "a", other, headers=headers))[0] == 200  # another session: LRU slot
    assert chats[-1]["id_slot"] == 0
    assert (await call(app, "a", {"messages": [{"role": "system", "content": "no user"}]}))[0] == 200
    assert "id_slot" not in chats[-1]  # no session: not pinned
    await app.shutdown()


async def test_a_build_whose_restores_restore_nothing_is_turned_off(world: World) -> None:
    world.options = {"restore_works": False}
    manager, app = await served(world, world.spec("a"))
    assert (await call(app, "a", conversation()))[0] == 200
    await manager.unload("a")
    assert (await call(app, "a", conversation("x", "y")))[0] == 200
    [verified] = world.of("session_verified")
    assert verified["verdict"] == "broken"
    [off] = world.of("session_cache_off", model="a")
    assert off["reason"].startswith(f"restores restore nothing with {PYTHON}")
    state = manager.session_status()
    assert state is not None and state["off"] == {"a": off["reason"]}
    assert (await call(app, "a", conversation("x", "y", "z", "w")))[0] == 200
    assert "id_slot" not in world.child("a").standin.chats[-1]  # no more pinning
    await manager.unload("a")
    assert (await call(app, "a", conversation("x", "y")))[0] == 200
    assert "--slot-save-path" not in world.child("a").argv  # the next start takes no part
    assert len(world.of("session_cache_off")) == 1 and len(world.of("session_restored")) == 1
    await app.shutdown()


STANDIN = Path(__file__).parents[1] / "slot_standin.py"


def test_a_served_swapper_turns_the_cache_off_for_a_build_whose_restores_restore_nothing(
        swapper: Callable[[str], Any], tmp_path: Path) -> None:
    """Processes all the way: ``python -m swapper`` from a YAML config, its child the stand-in
    whose restore reports success and restores nothing. One line in the log, the reason in
    ``/api/state`` (the page's source), no more pinning or saving for it."""
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    server = swapper(f"""
sessionCache: {{dir: {tmp_path / "sessions"}, minTokens: 1}}
models:
  a:
    cmd: {sys.executable} {STANDIN} --port ${{PORT}} -m {model} --restore-broken
    sessionCache: true
""")
    body = {"model": "a", **conversation()}
    assert server.post(CHAT, body)[0] == 200
    assert server.post("/unload/a")[0] == 200
    status, _, answer = server.post(CHAT, {"model": "a", **conversation("x", "y")})
    assert status == 200 and json.loads(answer)["timings"]["cache_n"] == 0
    events = json.loads(server.get("/events")[2])
    assert [e["kind"] for e in events if e["kind"].startswith("session_")] == [
        "session_saved", "session_restored", "session_verified", "session_cache_off"]
    reason = next(e["reason"] for e in events if e["kind"] == "session_cache_off")
    assert reason.startswith(f"restores restore nothing with {PYTHON}")
    lines = [line for line in server.output().splitlines() if "session_cache_off" in line]
    assert len(lines) == 1 and " WARNING swapper " in lines[0] and reason in lines[0]
    state = json.loads(server.get("/api/state")[2])
    assert state["sessions"]["off"] == {"a": reason}
    assert server.post("/unload/a")[0] == 200
    assert server.post(CHAT, body)[0] == 200
    assert "--slot-save-path" not in server.running()["a"]["cmd"]  # off until the server restarts
    saves = [e for e in json.loads(server.get("/events")[2]) if e["kind"] == "session_saved"]
    assert len(saves) == 1
