"""The session cache's verification, slot client and facade, against an in-process stand-in
for llama-server's slot API (fault injection: a restore that restores nothing, a slow save)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from swapper.sessions.cache import CacheSettings, ChildPlan, ChildSessions, SessionCache
from swapper.sessions.keys import session_key
from swapper.sessions.slots import RestoreRejected, SlotClient, SlotError, SlotTimeout
from swapper.sessions.verify import TAP_TAIL, Timings, TimingsTap, Verdict, judge, timings_in
from swapper.upstream import UpstreamPool
from tests.conftest import eventually
from tests.slot_standin import SlotStandIn

# -- verification (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(("timings", "forced", "cache_prompt", "verdict"), [
    (Timings(6050, 17), True, True, Verdict.OK),  # measured on the real server
    (Timings(6049, 18), True, True, Verdict.OK),  # the last token re-read
    (Timings(69, 1), True, True, Verdict.OK),  # a prompt shorter than what was restored
    (Timings(2000, 4067), True, True, Verdict.MISS),  # the conversation was edited
    (Timings(0, 6067), True, True, Verdict.BROKEN),  # nothing restored
    (Timings(0, 6067), False, True, Verdict.MISS),  # not pinned: another slot was used
    (Timings(0, 6067), True, False, Verdict.MISS),  # the request turned caching off
    (None, True, True, Verdict.UNKNOWN),
])
def test_judge(timings: Timings | None, forced: bool, cache_prompt: bool, verdict: Verdict) -> None:
    assert judge(6050, timings, forced, cache_prompt) is verdict
    assert judge(0, timings, forced, cache_prompt) is Verdict.UNKNOWN


def sse(*events: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_timings_are_found_in_each_protocol() -> None:
    chat = {"choices": [], "usage": {"prompt_tokens": 6067, "prompt_tokens_details": {"cached_tokens": 1}},
            "timings": {"cache_n": 6050, "prompt_n": 17, "prompt_ms": 1.5}}
    assert timings_in(json.dumps(chat).encode()) == Timings(6050, 17)
    assert timings_in(sse({"choices": []}, chat)) == Timings(6050, 17)
    anthropic = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
                 b'{"cache_read_input_tokens":20,"input_tokens":1,"output_tokens":0}}}\n\n'
                 b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":4}}\n\n')
    assert timings_in(anthropic) == Timings(20, 1)
    responses = {"usage": {"input_tokens": 21, "output_tokens": 4,
                           "input_tokens_details": {"cached_tokens": 20}}}
    assert timings_in(json.dumps(responses).encode()) == Timings(20, 1)
    for bad in (b"", b'"timings": {"cache_n": -1, "prompt_n": 3}', b'"timings": {"cache_n": true}',
                b'"usage": {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 9}}',
                b'"usage": {' + b"x" * 100_000):
        assert timings_in(bad) is None


def test_the_tap_keeps_the_start_and_the_end_of_a_long_answer() -> None:
    tap = TimingsTap()
    tap.feed(b'data: {"message":{"usage":{"cache_read_input_tokens":7,"input_tokens":2}}}\n\n')
    for _ in range(100):
        tap.feed(b"data: " + b"x" * 10_000 + b"\n\n")
    assert tap.timings() == Timings(7, 2)
    tap.feed(b'data: {"timings":{"cache_n":9,"prompt_n":1}}\n\n')
    assert tap.timings() == Timings(9, 1)
    assert sum(len(c) for c in tap._tail) < TAP_TAIL + 10_010


# -- the slot client ------------------------------------------------------------------------


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    pool.close()


@pytest.fixture
async def standins() -> AsyncIterator[Callable[..., Any]]:
    started: list[SlotStandIn] = []

    async def start(save_dir: Path | None, **options: Any) -> SlotStandIn:
        standin = SlotStandIn(save_dir, **options)
        await standin.start()
        started.append(standin)
        return standin

    yield start
    for standin in started:
        await standin.stop()


async def test_the_client_checks_slot_ids_names_and_answers(tmp_path: Path, pool: UpstreamPool,
                                                            standins: Callable[..., Any]) -> None:
    standin = await standins(tmp_path, slots=2)
    client = SlotClient(standin.base_url, pool)
    with pytest.raises(SlotError, match="props first"):
        await client.save(0, "0" * 32 + ".bin", 5)
    props = await client.props(5)
    assert (props.total_slots, props.n_ctx, props.multimodal) == (2, 4096, False)
    for slot in (2, -1, True):
        with pytest.raises(ValueError, match="is not one of"):
            await client.save(slot, "0" * 32 + ".bin", 5)
    for name in ("../x.bin", "a/b.bin", "x.gguf", "", "0" * 200 + ".bin"):
        with pytest.raises(ValueError, match="not a session file name"):
            await client.restore(0, name, 5)
    assert [s.tokens for s in await client.slots(5)] == [None, None]
    empty = await client.save(1, "1" * 32 + ".bin", 5)
    assert (empty.slot, empty.tokens) == (1, 0)
    with pytest.raises(RestoreRejected, match="400"):
        await client.restore(0, "2" * 32 + ".bin", 5)
    standin.wrong_slot = True
    with pytest.raises(SlotError, match="names another slot"):
        await client.erase(0, 5)


async def test_a_slow_call_is_abandoned_in_time(tmp_path: Path, pool: UpstreamPool,
                                                standins: Callable[..., Any]) -> None:
    standin = await standins(tmp_path, save_delay=30)
    client = SlotClient(standin.base_url, pool)
    await client.props(5)
    started = time.monotonic()
    with pytest.raises(SlotTimeout, match=r"within 0\.3 s"):
        await client.save(0, "0" * 32 + ".tmp", 0.3)
    assert time.monotonic() - started < 2


async def test_an_unreachable_child_is_a_slot_error(pool: UpstreamPool) -> None:
    from tests.conftest import free_port

    with pytest.raises(SlotError, match="cannot connect"):
        await SlotClient(f"http://127.0.0.1:{free_port()}", pool).props(2)


# -- the facade against the stand-in --------------------------------------------------------


def conversation(turns: int) -> dict:
    messages = [{"role": "system", "content": "You are a careful agent. " * 20}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"step {turn}: " + "do the thing " * 30})
        messages.append({"role": "assistant", "content": "done " * 10})
    return {"messages": messages[:-1], "max_tokens": 4}


class Events(list):
    def __call__(self, kind: str, **fields: Any) -> None:
        self.append((kind, fields))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self]

    def of(self, kind: str) -> list[dict]:
        return [fields for k, fields in self if k == kind]


@pytest.fixture
def model_files(tmp_path: Path) -> list[str]:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    return [sys.executable, "-m", str(model), "-c", "4096", "-np", "1", "--port", "${PORT}"]


def new_cache(tmp_path: Path, pool: UpstreamPool, events: Events, **settings: Any) -> SessionCache:
    return SessionCache(CacheSettings(tmp_path / "sessions", settings.pop("max_bytes", 10**9),
                                      **{"min_tokens": 1, **settings}), pool, events)


async def child_of(cache: SessionCache, argv: list[str], standins: Callable[..., Any],
                   **options: Any) -> tuple[ChildSessions, SlotStandIn, ChildPlan]:
    plan = cache.plan("agent", argv, {})
    assert plan is not None, cache.off
    standin = await standins(plan.directory, **options)
    child = await plan.attach(standin.base_url)
    assert child is not None
    return child, standin, plan


async def turn(child: ChildSessions, standin: SlotStandIn, body: dict, forced: bool = True) -> Verdict | None:
    session = session_key(None, body)
    slot = await child.before_request(session)
    request = dict(body, id_slot=slot) if slot is not None else body
    timings = timings_in(json.dumps(await standin._chat_direct(request)).encode())
    if slot is not None:
        child.release(slot)
    return child.after_response(session, timings, forced=forced)


async def _chat_direct(self: SlotStandIn, body: dict) -> dict:
    """A chat request to the stand-in over HTTP."""
    import aiohttp

    async with aiohttp.ClientSession() as http, \
            http.post(self.base_url + "/v1/chat/completions", json=body) as resp:
        return dict(await resp.json())

SlotStandIn._chat_direct = _chat_direct  # type: ignore[attr-defined]


async def saved_session(tmp_path: Path, pool: UpstreamPool, standins: Callable[..., Any],
                        argv: list[str], **settings: Any) -> tuple[SessionCache, Events, ChildPlan]:
    """A cache holding one session saved from a first child (conversation(1))."""
    events = Events()
    cache = new_cache(tmp_path, pool, events, **settings)
    child, standin, plan = await child_of(cache, argv, standins)
    assert await turn(child, standin, conversation(1)) is None  # nothing was restored
    assert await child.save_all() == 1
    return cache, events, plan


async def test_a_session_is_saved_and_restored_into_a_fresh_child(
        tmp_path: Path, pool: UpstreamPool, standins: Callable[..., Any], model_files: list[str]) -> None:
    cache, events, plan = await saved_session(tmp_path, pool, standins, model_files)
    assert plan.extra_argv == ("--slot-save-path", str(plan.directory))
    saved = events.of("session_saved")[0]
    assert saved["tokens"] > 100 and saved["model"] == "agent"
    again, standin2, _ = await child_of(cache, model_files, standins)
    assert await turn(again, standin2, conversation(2)) is Verdict.OK
    assert standin2.calls[0][:2] == ("restore", 0)
    assert events.of("session_verified")[0]["cache_n"] == saved["tokens"]
    assert "session_cache_off" not in events.kinds()


async def test_a_restore_that_restores_nothing_turns_the_feature_off(
        tmp_path: Path, pool: UpstreamPool, standins: Callable[..., Any], model_files: list[str]) -> None:
    cache, events, _ = await saved_session(tmp_path, pool, standins, model_files)
    broken, standin2, _ = await child_of(cache, model_files, standins, restore_works=False)
    assert await turn(broken, standin2, conversation(2)) is Verdict.BROKEN
    [off] = events.of("session_cache_off")
    assert off["model"] == "agent" and "restores restore nothing" in off["reason"]
    assert "cache_n 0" in off["reason"]
    assert await broken.before_request(session_key(None, conversation(3))) is None  # no pinning now
    assert await broken.save_all() == 0
    assert cache.plan("agent", model_files, {}) is None  # nor for the next child of that key
    assert cache.status()["broken"] and cache.status()["off"]["agent"] == off["reason"]


async def test_an_unpinned_miss_is_not_taken_for_a_broken_build(
        tmp_path: Path, pool: UpstreamPool, standins: Callable[..., Any], model_files: list[str]) -> None:
    cache, events, _ = await saved_session(tmp_path, pool, standins, model_files)
    other, standin2, _ = await child_of(cache, model_files, standins, restore_works=False)
    assert await turn(other, standin2, conversation(2), forced=False) is Verdict.MISS
    assert "session_cache_off" not in events.kinds()


async def test_a_slow_save_is_abandoned_and_the_stop_goes_on(
        tmp_path: Path, pool: UpstreamPool, standins: Callable[..., Any], model_files: list[str]) -> None:
    events = Events()
    cache = new_cache(tmp_path, pool, events, io_floor=0.3, io_ceiling=0.3)
    child, standin, plan = await child_of(cache, model_files, standins, save_delay=1)
    await turn(child, standin, conversation(1))
    started = time.monotonic()
    assert await child.save_all() == 0
    assert time.monotonic() - started < 1
    [failed] = events.of("session_save_failed")
    assert "within 0.3 s" in failed["reason"]
    assert cache.store.used == 0
    await eventually(lambda: any(plan.directory.glob("*.tmp")), 10, "the server to write the file late")
    cache.close()
    assert cache.plan("agent", model_files, {}) is not None  # the next open sweeps it
    assert [p.name for p in plan.directory.iterdir()] == ["key.json"]


async def test_short_and_empty_slots_are_not_saved(
        tmp_path: Path, pool: UpstreamPool, standins: Callable[..., Any], model_files: list[str]) -> None:
    events = Events()
    cache = new_cache(tmp_path, pool, events, min_tokens=10_000)
    child, standin, plan = await child_of(cache, model_files, standins)
    await turn(child, standin, conversation(1))
    assert await child.save_all() == 0  # under min_tokens
    cache.settings = CacheSettings(cache.settings.root, cache.settings.max_bytes, min_tokens=1)
    standin.cells[0] = 0  # the slot is empty although /slots counts tokens
    assert await child.save_all() == 0
    assert standin.calls[-1][0] == "save" and not list(plan.directory.glob("*.bin"))
    assert "session_saved" not in events.kinds()


async def test_a_changed_window_discards_and_never_restores(
        tmp_path: Path, pool: UpstreamPool, standins: Callable[..., Any], model_files: list[str]) -> None:
    cache, events, first = await saved_session(tmp_path, pool, standins, model_files)
    narrower = [a if a != "4096" else "2048" for a in model_files]
    other, standin2, second = await child_of(cache, narrower, standins)
    assert second.key.hex != first.key.hex and not first.directory.exists()
    [discarded] = events.of("session_discarded")
    assert discarded["reason"] == "the settings changed (was -c 4096, now -c 2048)"
    assert await turn(other, standin2, conversation(2)) is None
    assert [c[0] for c in standin2.calls] == []


async def test_a_file_the_server_refuses_is_discarded(
        tmp_path: Path, pool: UpstreamPool, standins: Callable[..., Any], model_files: list[str]) -> None:
    cache, events, _ = await saved_session(tmp_path, pool, standins, model_files)
    other, standin2, _ = await child_of(cache, model_files, standins)
    standin2.save_dir = tmp_path  # the server looks elsewhere: 400
    assert await turn(other, standin2, conversation(2)) is None
    [discarded] = events.of("session_discarded")
    assert discarded["reason"].startswith("the server refused it")
    assert cache.store.entries() == []


async def test_a_session_restores_once_and_its_requests_wait_for_it(
        tmp_path: Path, pool: UpstreamPool, standins: Callable[..., Any], model_files: list[str]) -> None:
    """Concurrent requests of one session wait for its restore; the first is pinned to the
    slot, the others are not while it is busy (pinned, they would queue behind it)."""
    cache, _, _ = await saved_session(tmp_path, pool, standins, model_files)
    other, standin2, _ = await child_of(cache, model_files, standins)
    session = session_key(None, conversation(2))
    slots = await asyncio.gather(*(other.before_request(session) for _ in range(3)))
    assert slots == [0, None, None]
    assert [c[0] for c in standin2.calls] == ["restore"]
    assert other.wants_timings(session) and not other.wants_timings(None)
    other.release(0)
    assert await other.before_request(session) == 0


def test_the_default_cap_comes_from_the_disk(tmp_path: Path) -> None:
    from swapper.sessions.cache import default_max_bytes, disk_of

    gb = 10**9
    assert default_max_bytes(1000 * gb, 900 * gb) == 50 * gb  # at most 50 GB
    assert default_max_bytes(256 * gb, 200 * gb) == 25.6 * gb  # a tenth of the disk
    assert default_max_bytes(256 * gb, 10 * gb) == 5 * gb  # half the free space
    total, free = disk_of(tmp_path / "not" / "yet")
    assert total >= free > 0


async def test_a_root_held_by_another_server_turns_the_feature_off_until_it_is_free(
        tmp_path: Path, pool: UpstreamPool, model_files: list[str]) -> None:
    from swapper.sessions.store import SessionStore

    other = SessionStore(tmp_path / "sessions", 10**9)
    other.open()
    events = Events()
    cache = new_cache(tmp_path, pool, events)
    assert cache.plan("agent", model_files, {}) is None
    assert "in use by another server" in events.of("session_cache_off")[0]["reason"]
    other.close()
    assert cache.plan("agent", model_files, {}) is not None and cache.off == {}
