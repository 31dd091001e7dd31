"""The manager in process, with fake children and a fake clock: races without subprocesses.

Every child is a :class:`FakeChild` whose readiness and stop the test releases
by hand, so an interleaving (unload during a swap, a request racing a TTL stop,
a reconfigure during a load) is chosen, not hoped for. Progress is awaited by
yielding to the event loop until a condition holds, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from swapper.config import Matrix, ModelSpec, SwapperConfig
from swapper.errors import ApiError
from swapper.events import EventBus
from swapper.identity import Identity
from swapper.logring import LogSink
from swapper.manager import Lease, Manager
from swapper.process import LoadError
from swapper.scheduler import Status
from swapper.upstream import UpstreamPool
from tests.conftest import until

pytestmark = pytest.mark.timeout(10)  # a lost wake-up shows as a hang: fail it fast
_pids = itertools.count(1000)


class FakeChild:
    """A child whose load and stop end when the test says so."""

    def __init__(self, world: World, spec: ModelSpec, port: int | None, log: LogSink,
                 health_timeout: float, on_exit: Callable[[Any], None],
                 private_env: frozenset[str]) -> None:
        self.world, self.spec, self.port, self._on_exit = world, spec, port, on_exit
        self.base_url = f"http://127.0.0.1:{port}"
        self.argv = list(spec.cmd)
        self.ready_at = 0.0
        self.pid: int | None = None
        self.returncode: int | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.stop_gate = asyncio.Event()
        self.stop_asked = False
        self.exited = asyncio.Event()
        world.children.append(self)

    def spawn(self) -> Identity:
        self.pid = next(_pids)
        return Identity(self.pid, 0.0)

    async def wait_ready(self, http: UpstreamPool) -> None:
        exited = asyncio.ensure_future(self.exited.wait())
        await asyncio.wait({self.ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if self.exited.is_set():
            raise LoadError(f"model '{self.spec.id}' exited with code {self.returncode} while loading")
        self.ready_at = self.world.now

    async def stop(self) -> None:
        if self.exited.is_set():
            return
        self.stop_asked = True
        if not self.world.instant_stops:
            await self.stop_gate.wait()
        self.exit(-15)

    def exit(self, code: int) -> None:
        """The process ends (asked to, or by itself)."""
        self.returncode = code
        self.exited.set()
        self._on_exit(self)


class World:
    """The fake children, the fake clock and a manager built over them."""

    def __init__(self) -> None:
        self.children: list[FakeChild] = []
        self.now = 100.0
        self.instant_stops = False

    def child(self, model: str, nth: int = -1) -> FakeChild:
        return [c for c in self.children if c.spec.id == model][nth]

    def spawned(self) -> list[str]:
        return [c.spec.id for c in self.children if c.pid is not None]

    def manager(self, config: SwapperConfig, runtime_dir: Path | None = None) -> Manager:
        def factory(*args: Any) -> FakeChild:
            return FakeChild(self, *args)
        return Manager(config, EventBus(), process_factory=factory, clock=lambda: self.now,
                       runtime_dir=runtime_dir)


def spec(model: str, **kw: Any) -> ModelSpec:
    return ModelSpec(id=model, cmd=("srv", model, "${PORT}"), **kw)


def config(*specs: ModelSpec, **kw: Any) -> SwapperConfig:
    return SwapperConfig(models={s.id: s for s in specs}, start_port=7000, **kw)


class Client:
    """One request holding a lease until released."""

    def __init__(self, manager: Manager, model: str) -> None:
        self.lease: Lease | None = None
        self.error: ApiError | None = None
        self._release = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(manager, model))

    async def _run(self, manager: Manager, model: str) -> None:
        try:
            async with manager.lease(model) as lease:
                self.lease = lease
                await self._release.wait()
        except ApiError as exc:
            self.error = exc

    def release(self) -> None:
        self._release.set()

    @property
    def done(self) -> bool:
        return self.task.done()


@pytest.fixture
def world() -> World:
    return World()


@contextlib.asynccontextmanager
async def running(manager: Manager) -> AsyncIterator[Manager]:
    try:
        yield manager
    finally:
        for child in [c for c in manager.processes.values()]:
            child.stop_gate.set()  # type: ignore[attr-defined]
        await manager.shutdown()


async def bring_up(world: World, manager: Manager, model: str) -> None:
    client = Client(manager, model)
    await until(lambda: any(c.spec.id == model and not c.ready.done() for c in world.children),
                f"{model} to spawn")
    world.child(model).ready.set_result(None)
    await until(lambda: client.lease is not None, f"{model} to be granted")
    client.release()
    await client.task


def rows(manager: Manager) -> dict[str, str]:
    return {row["model"]: row["state"] for row in manager.running()}


async def test_unload_while_a_swap_evicts_for_the_model_leaves_it_stopped(world: World) -> None:
    async with running(world.manager(config(spec("a"), spec("b")))) as manager:
        await bring_up(world, manager, "a")
        b = Client(manager, "b")
        await until(lambda: world.child("a").stop_asked, "the swap to stop a")
        unload = asyncio.ensure_future(manager.unload("b"))
        await until(lambda: b.done, "b's request to fail")
        assert b.error is not None and b.error.status == 503
        world.child("a").stop_gate.set()  # the eviction ends after the unload
        assert await unload == ["b"]
        assert manager.scheduler.status["b"] is Status.STOPPED
        assert rows(manager) == {}  # /running agrees with /unload
        assert world.spawned() == ["a"]  # b was never started
        swap = [e.fields for e in manager.bus.recent if e.kind == "swap_started"][-1]
        assert swap == {"model": "b", "evict": ["a"], "set": None, "cost": 1}


async def test_unload_while_the_model_loads_stops_it_and_reports_it_gone(world: World) -> None:
    world.instant_stops = True
    async with running(world.manager(config(spec("a")))) as manager:
        client = Client(manager, "a")
        await until(lambda: world.spawned() == ["a"], "a to spawn")
        assert rows(manager) == {"a": "starting"}
        assert await manager.unload("a") == ["a"]
        assert rows(manager) == {}
        await client.task
        assert client.error is not None and client.error.status == 503
        assert not any(e.kind == "model_exited" for e in manager.bus.recent)


async def test_request_racing_a_ttl_stop_waits_for_it_and_restarts(world: World) -> None:
    async with running(world.manager(config(spec("a", ttl=5)))) as manager:
        await bring_up(world, manager, "a")
        world.now += 6
        manager.expire_idle()
        assert rows(manager) == {"a": "stopping"}
        client = Client(manager, "a")
        await until(lambda: manager.scheduler.queued() != [], "the request to queue")
        world.child("a").stop_gate.set()
        await until(lambda: len(world.spawned()) == 2, "a to start again")
        world.child("a").ready.set_result(None)
        await until(lambda: client.lease is not None, "the request to be served")
        assert client.lease is not None and client.lease.base_url == world.child("a").base_url
        client.release()
        await client.task
        assert [e.fields["reason"] for e in manager.bus.recent if e.kind == "model_stopping"] == ["ttl"]


async def test_ttl_refused_while_a_request_is_in_flight(world: World) -> None:
    async with running(world.manager(config(spec("a", ttl=5)))) as manager:
        await bring_up(world, manager, "a")
        client = Client(manager, "a")
        await until(lambda: client.lease is not None, "the request to be served")
        world.now += 60
        manager.expire_idle()
        assert rows(manager) == {"a": "ready"}
        client.release()
        await client.task


async def test_reconfigure_during_a_load_restarts_with_the_new_settings(world: World) -> None:
    old = spec("a")
    new = replace(old, cmd=("srv", "a", "--new", "${PORT}"))
    async with running(world.manager(config(old))) as manager:
        world.instant_stops = True
        first = Client(manager, "a")
        await until(lambda: world.spawned() == ["a"], "the old a to spawn")
        assert manager.reconfigure(config(new)) == ["a"]
        world.child("a", 0).ready.set_result(None)
        await until(lambda: first.lease is not None, "the waiter to get the old load")
        assert first.lease is not None and first.lease.spec == old
        later = Client(manager, "a")
        await until(lambda: manager.scheduler.queued() != [], "a new request to wait for the restart")
        first.release()
        await until(lambda: len(world.spawned()) == 2, "a to restart")
        assert world.child("a", 1).argv == ["srv", "a", "--new", "${PORT}"]
        world.child("a", 1).ready.set_result(None)
        await until(lambda: later.lease is not None, "the new request to be served")
        assert later.lease is not None and later.lease.spec == new
        later.release()
        await later.task


async def test_unexpected_exit_is_reported_once_and_the_next_request_restarts(world: World) -> None:
    async with running(world.manager(config(spec("a")))) as manager:
        await bring_up(world, manager, "a")
        world.child("a").exit(1)
        assert rows(manager) == {}
        assert [e.kind for e in manager.bus.recent].count("model_exited") == 1
        client = Client(manager, "a")
        await until(lambda: len(world.spawned()) == 2, "a to start again")
        world.child("a").ready.set_result(None)
        await until(lambda: client.lease is not None, "the request to be served")
        client.release()
        await client.task


async def test_a_child_that_exits_by_itself_leaves_no_record_to_reap(world: World,
                                                                     tmp_path: Path) -> None:
    """Records are for children still running; one left stays until the next start reaps it."""
    records = tmp_path / "children"
    async with running(world.manager(config(spec("a"), spec("b")), tmp_path)) as manager:
        await bring_up(world, manager, "a")
        assert [p.name for p in records.iterdir()] == [f"{world.child('a').pid}.json"]
        world.child("a").exit(1)  # a crash while ready
        assert list(records.iterdir()) == []
        client = Client(manager, "b")
        await until(lambda: "b" in world.spawned(), "b to spawn")
        world.child("b").exit(1)  # a crash while loading
        await client.task
        assert client.error is not None and list(records.iterdir()) == []
        await bring_up(world, manager, "a")
        world.instant_stops = True
        await manager.unload("a")  # a stop
        assert list(records.iterdir()) == []


async def test_a_waiting_model_is_served_after_the_limit_plus_one_drain(world: World) -> None:
    """Steady traffic on 'agent' must not starve 'plan' past maxQueueWait."""
    world.instant_stops = True
    cfg = config(spec("agent"), spec("plan"), max_queue_wait=10.0)
    async with running(world.manager(cfg)) as manager:
        await bring_up(world, manager, "agent")
        busy = Client(manager, "agent")
        await until(lambda: busy.lease is not None, "agent to serve")
        plan = Client(manager, "plan")
        await until(lambda: manager.scheduler.queued() != [], "plan to queue")
        world.now += 9.0
        young = Client(manager, "agent")  # under the limit: collation serves agent
        await until(lambda: young.lease is not None, "agent traffic before the limit")
        young.release()
        world.now += 1.0
        held = Client(manager, "agent")  # plan is overdue: agent is held
        await until(lambda: len(manager.scheduler.queued()) == 2, "agent to queue behind plan")
        assert held.lease is None and plan.lease is None
        busy.release()  # the one drain
        await until(lambda: world.spawned() == ["agent", "plan"], "the swap to plan")
        world.child("plan").ready.set_result(None)
        await until(lambda: plan.lease is not None, "plan to be served")
        assert held.lease is None
        plan.release()
        await until(lambda: len(world.spawned()) == 3, "agent to come back")
        world.child("agent").ready.set_result(None)
        await until(lambda: held.lease is not None, "the held agent request to be served")
        held.release()
        for client in (busy, young, plan, held):
            await client.task
            assert client.error is None


async def test_shutdown_fails_waiters_and_reports_no_unexpected_exit(world: World) -> None:
    world.instant_stops = True
    manager = world.manager(config(spec("a"), spec("b")))
    await bring_up(world, manager, "a")
    loading = Client(manager, "b")
    await until(lambda: len(world.spawned()) == 1 and world.child("a").exited.is_set(),
                "the swap to evict a")
    await until(lambda: len(world.spawned()) == 2, "b to spawn")
    await manager.shutdown()
    await loading.task
    assert loading.error is not None and loading.error.status == 503
    assert all(c.exited.is_set() for c in world.children)
    assert not any(e.kind == "model_exited" for e in manager.bus.recent)


async def test_why_a_model_was_evicted_has_one_answer_in_the_events(world: World) -> None:
    world.instant_stops = True
    matrix = Matrix(sets={"pair": "a & b", "solo": "c"}, evict_costs={"a": 3})
    async with running(world.manager(config(spec("a"), spec("b"), spec("c"),
                                            matrix=matrix))) as manager:
        await bring_up(world, manager, "a")
        await bring_up(world, manager, "b")
        await bring_up(world, manager, "c")
        swaps = [e.fields for e in manager.bus.recent if e.kind == "swap_started"]
        assert swaps[-1] == {"model": "c", "evict": ["a", "b"], "set": "solo", "cost": 4}
        assert swaps[1] == {"model": "b", "evict": [], "set": "pair", "cost": 0}
        stops = {e.fields["model"]: e.fields["reason"] for e in manager.bus.recent
                 if e.kind == "model_stopping"}
        assert stops == {"a": "evicted for c", "b": "evicted for c"}
        assert rows(manager) == {"c": "ready"}


async def test_unloading_a_model_a_swap_is_evicting_waits_until_it_is_gone(world: World) -> None:
    async with running(world.manager(config(spec("a"), spec("b")))) as manager:
        await bring_up(world, manager, "a")
        b = Client(manager, "b")
        await until(lambda: world.child("a").stop_asked, "the swap to stop a")
        unload = asyncio.ensure_future(manager.unload("a"))
        await until(lambda: manager.scheduler.queued() == [] and not unload.done(), "unload to wait")
        world.child("a").stop_gate.set()
        assert await unload == ["a"]
        assert "a" not in rows(manager)
        await until(lambda: "b" in world.spawned(), "b to spawn")
        world.child("b").ready.set_result(None)
        await until(lambda: b.lease is not None, "b to be served")
        b.release()
        await b.task
