"""Peers side by side in one run: direct llama-server, llama.cpp's router mode, ``llmstack serve``.

**Real upstream** (the same ``llama-server`` binary, the demo's tiny models that
``llmstack serve --demo`` makes, and the exact flags llmstack gives its ``fast``
child):

* ``direct``   - ``llama-server -m tiny-fast.gguf`` on its own port;
* ``router``   - llama.cpp's router mode: ``llama-server --models-dir <demo dir>
  --models-max 1`` (no model), requests for ``tiny-fast``;
* ``llmstack`` - ``llmstack serve --demo``, model ``auto`` (classified to ``fast``).

**Fake upstream** (``tests/fake_upstream.py``, 32 chunks, for the proxy-only
figures; llama.cpp's router cannot run it, it spawns its own binary): ``direct``,
``llmstack`` ``fast`` (named tier) and ``auto``; and the same with tokens paced
5 ms apart, for the CPU each streamed token costs the proxy.

Reported per target: p50/p95 added latency (non-streaming, and time to first
streamed chunk; targets interleaved request by request), streams/s at 8 and 32
concurrent clients as % of direct (ABBA passes, median pass), the serving
process's CPU per request and per streamed token, its idle RSS (children
excluded); and a swap (two models alternating, one resident at a time) through
the router and through the swapper over a raw spawn to first reply, and over a raw
spawn plus the stop of its predecessor (what a swap does by hand). CPU is read from
the kernel's per-process CPU clock; a paced token's CPU is the slope between two
stream lengths. Nothing asserts a timing; every stream must end with ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from bench_cold_start import Rig, finish, first_chunk
from bench_proxy import JSON, nonstream
from conftest import (
    cpu_seconds,
    ms,
    new_loop,
    p50,
    percentile,
    proc_status_kb,
    record,
    rotate,
    write_fake_llama_server,
)

from tests.conftest import (
    FAKE_UPSTREAM,
    Server,
    free_port,
    start_llmstack,
    start_server,
    stop_server,
    wait_until,
)

CHAT = "/v1/chat/completions"
# llama-server closes its socket after every stream; a client that reused it would meet a
# closed connection, so every target's streams are sent with "Connection: close" (the same
# cost for all; non-streaming requests keep their connection alive)
STREAM_HEADERS = {**JSON, "connection": "close"}
ROUNDS = 150  # interleaved latency rounds (each target once per round, both kinds)
STREAMS_PER_PASS = 192
PASSES = 4  # per target and concurrency, ABBA
SWAP_ROUNDS = 15
BIG_SWAP_ROUNDS = 12
BIG = {"dim": 1024, "layers": 8, "ff": 2816}  # ~415 MB
MAX_TOKENS = 16
FAKE_CHUNKS = 32
PACED_STREAMS = ((32, 8), (128, 4))  # (tokens per stream, streams per client), 16 clients

pytestmark = pytest.mark.timeout(600)


@dataclass
class Target:
    name: str
    base: str
    model: str
    pid: int  # the serving process: its CPU and RSS are the target's
    max_tokens: int = MAX_TOKENS  # the paced fakes stream this many tokens

    def payload(self, stream: bool) -> bytes:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens,
                                "messages": [{"role": "user", "content": "Say hello"}]}
        if stream:
            body["stream"] = True
        return json.dumps(body).encode()


@dataclass
class Harness:
    kind: str
    loop: asyncio.AbstractEventLoop
    session: aiohttp.ClientSession
    targets: dict[str, Target]
    tokens_per_stream: int
    servers: list[Server] = field(default_factory=list)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


def _argv_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


_PER_MODEL = {"-m", "--model", "--port", "--host", "-a", "--alias"}


def _shared_flags(argv: list[str]) -> list[str]:
    """llama-server flags less the model, address and alias (value-taking options)."""
    flags, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg in _PER_MODEL:
            skip = True
        else:
            flags.append(arg)
    return flags


def _model_file(argv: list[str]) -> Path:
    return Path(argv[argv.index("-m") + 1] if "-m" in argv else argv[argv.index("--model") + 1])


def _llmstack(tmp: Path, env: dict[str, str]) -> Server:
    """``llmstack serve --demo`` on a cache that already holds the demo models (a second
    start: making them on the first loads numpy into the serving process)."""
    cache = {"LLMSTACK_CACHE_DIR": str(tmp / "cache")}
    subprocess.run([sys.executable, "-c", "from llmstack.config.demo import demo_stack; "
                    "from llmstack.models.demo import demo_files; from llmstack.settings import Settings; "
                    "demo_files(demo_stack(), Settings.read().cache_dir)"],
                   env={**os.environ, **cache}, check=True)
    return start_llmstack(tmp / f"llmstack-{len(list(tmp.iterdir()))}.log", "--demo",
                          env={"LLMSTACK_CACHE_DIR": str(tmp / "cache"),
                               "LLMSTACK_MODELS_INI": str(tmp / "no-models.ini"), **env},
                          ready_path="/health", timeout=30)


def _fast_pid(stack: Server) -> int:
    wait_until(lambda: stack.running().get("fast", {}).get("state") == "ready", 60, "fast ready")
    return int(stack.running()["fast"]["pid"])


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))


def _warm(h: Harness) -> None:
    for target in h.targets.values():
        for _ in range(20):
            h.run(nonstream(h.session, target.base + CHAT, target.payload(False)))
            h.run(_stream(h.session, target))


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: str) -> Iterator[Harness]:
    binary = llama_server_bin
    tmp = tmp_path_factory.mktemp("peers-real")
    loop = new_loop()
    session = loop.run_until_complete(_session())
    h = Harness("real", loop, session, {}, MAX_TOKENS)
    try:
        stack = _llmstack(tmp, {"LLMSTACK_LLAMA_SERVER": binary})
        h.servers.append(stack)
        h.run(nonstream(session, stack.base + CHAT, Target("", "", "auto", 0).payload(False)))
        child = _argv_of(_fast_pid(stack))
        flags, model = _shared_flags(child), _model_file(child)
        port = free_port()
        direct = start_server([binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                               *flags], port, tmp / "direct.log")
        h.servers.append(direct)
        router = _router_over(tmp, binary, flags, model.parent)
        h.servers.append(router)
        ids = [m["id"] for m in json.loads(router.get("/v1/models")[2])["data"]]
        assert model.stem in ids, ids
        h.targets = {"direct": Target("direct", direct.base, "fast", direct.popen.pid),
                     "router": Target("router", router.base, model.stem, router.popen.pid),
                     "llmstack": Target("llmstack", stack.base, "auto", stack.popen.pid)}
        _warm(h)
        h.servers.append(_swap_rig_swapper(tmp, binary, flags, model))
        yield h
    finally:
        _close(h)


def _close(h: Harness) -> None:
    """End a harness: its client session and loop, then its servers, last started first."""
    h.loop.run_until_complete(h.session.close())
    h.loop.close()
    for server in reversed(h.servers):
        stop_server(server)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    tmp = tmp_path_factory.mktemp("peers-fake")
    loop = new_loop()
    session = loop.run_until_complete(_session())
    h = Harness("fake", loop, session, {}, FAKE_CHUNKS)
    try:
        for suffix, pace in (("", "0"), ("-paced", "5")):
            flags: tuple[str, ...] = ("--chunks", str(FAKE_CHUNKS), "--chunk-ms", pace)
            if pace != "0":
                flags += ("--chunks-from-max-tokens",)
            port = free_port()
            direct = start_server([sys.executable, str(FAKE_UPSTREAM), "--port", str(port), *flags],
                                  port, tmp / f"direct{suffix}.log")
            h.servers.append(direct)
            (tmp / suffix).mkdir(exist_ok=True)
            wrapper = write_fake_llama_server(tmp / suffix, *flags)
            stack = _llmstack(tmp, {"LLMSTACK_LLAMA_SERVER": str(wrapper)})
            h.servers.append(stack)
            h.targets[f"direct{suffix}"] = Target(f"direct{suffix}", direct.base, "fake", direct.popen.pid)
            h.targets[f"llmstack-fast{suffix}"] = Target(f"llmstack-fast{suffix}", stack.base, "fast",
                                                         stack.popen.pid)
            h.targets[f"llmstack-auto{suffix}"] = Target(f"llmstack-auto{suffix}", stack.base, "auto",
                                                         stack.popen.pid)
        paced = {k: v for k, v in h.targets.items() if k.endswith("-paced")}
        h.targets = {k: v for k, v in h.targets.items() if not k.endswith("-paced")}
        _warm(h)
        h.targets.update(paced)
        yield h
    finally:
        _close(h)


def _unpaced(h: Harness) -> list[str]:
    return [n for n in h.targets if not n.endswith("-paced")]


async def _stream(session: aiohttp.ClientSession, target: Target) -> float:
    """One streaming request to the end; returns the time to its first chunk."""
    start = time.perf_counter()
    resp = await session.post(target.base + CHAT, data=target.payload(True), headers=STREAM_HEADERS)
    if resp.status != 200:
        raise AssertionError(f"{target.name}: {resp.status} {(await resp.read())[:200]!r}")
    first = await resp.content.readany()
    ttfc = time.perf_counter() - start
    tail = first[-64:]
    while chunk := await resp.content.readany():
        tail = (tail + chunk)[-64:]
    resp.release()
    if b"[DONE]" not in tail:
        raise AssertionError(f"{target.name}: stream ended without [DONE]: {tail!r}")
    return ttfc


# --------------------------------------------------------------------------- latency


def _latency(benchmark: Any, h: Harness) -> None:
    names = _unpaced(h)
    lat: dict[str, list[float]] = {n: [] for n in names}
    ttfc: dict[str, list[float]] = {n: [] for n in names}
    cpu: Counter[str] = Counter()
    cpu_stream: Counter[str] = Counter()

    async def rounds() -> None:
        for i in range(ROUNDS):
            for name in rotate(names, i):
                t = h.targets[name]
                before = cpu_seconds(t.pid)
                start = time.perf_counter()
                await nonstream(h.session, t.base + CHAT, t.payload(False))
                lat[name].append(time.perf_counter() - start)
                mid = cpu_seconds(t.pid)
                ttfc[name].append(await _stream(h.session, t))
                cpu[name] += mid - before
                cpu_stream[name] += cpu_seconds(t.pid) - mid

    benchmark.group = f"peers ({h.kind}): latency, {ROUNDS} interleaved rounds"
    benchmark.pedantic(lambda: h.run(rounds()), rounds=1, iterations=1)
    title = f"peers ({h.kind} upstream): added latency, {ROUNDS} interleaved rounds"
    for name in names:
        row = {
            "p50_ms": ms(p50(lat[name])), "p95_ms": ms(percentile(lat[name], 95)),
            "added_p50_ms": ms(p50(lat[name]) - p50(lat["direct"])),
            "added_p95_ms": ms(percentile(lat[name], 95) - percentile(lat["direct"], 95)),
            "ttfc_p50_ms": ms(p50(ttfc[name])),
            "ttfc_added_p50_ms": ms(p50(ttfc[name]) - p50(ttfc["direct"])),
            "ttfc_added_p95_ms": ms(percentile(ttfc[name], 95) - percentile(ttfc["direct"], 95)),
            "cpu_ms_per_req": ms(cpu[name] / ROUNDS),
            "cpu_us_per_streamed_token": round(cpu_stream[name] / ROUNDS / h.tokens_per_stream * 1e6, 1),
        }
        benchmark.extra_info[name] = row
        record(title, name, **row)


def test_real_latency(benchmark: Any, real: Harness) -> None:
    _latency(benchmark, real)


def test_fake_latency(benchmark: Any, fake: Harness) -> None:
    _latency(benchmark, fake)


# --------------------------------------------------------------------------- throughput


async def _load(h: Harness, target: Target, clients: int, per_client: int) -> tuple[float, Counter[str]]:
    outcome: Counter[str] = Counter()

    async def client() -> None:
        for _ in range(per_client):
            try:
                await _stream(h.session, target)
                outcome["ok"] += 1
            except AssertionError as exc:
                outcome[str(exc)[:40]] += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, outcome


def _throughput(benchmark: Any, h: Harness, clients: int) -> None:
    names = _unpaced(h)
    per_client = round(STREAMS_PER_PASS / clients)
    order = [n for i in range(PASSES) for n in (names if i % 2 == 0 else names[::-1])]
    rates: dict[str, list[float]] = {n: [] for n in names}
    outcomes: dict[str, Counter[str]] = {n: Counter() for n in names}
    cpu: Counter[str] = Counter()

    def run_all() -> None:
        for name in order:
            t = h.targets[name]
            before = cpu_seconds(t.pid)
            wall, outcome = h.run(_load(h, t, clients, per_client))
            cpu[name] += cpu_seconds(t.pid) - before
            rates[name].append(outcome["ok"] / wall)
            outcomes[name] += outcome

    benchmark.group = f"peers ({h.kind}): {clients} concurrent streams"
    benchmark.pedantic(run_all, rounds=1, iterations=1)
    title = f"peers ({h.kind} upstream): {clients} concurrent streams, {PASSES} passes (median)"
    direct = p50(rates["direct"])
    for name in names:
        total = sum(outcomes[name].values())
        row = {"streams_per_s": round(p50(rates[name]), 1),
               "pct_of_direct": round(100 * p50(rates[name]) / direct, 1),
               "not_ok": ", ".join(f"{k}:{v}" for k, v in outcomes[name].items() if k != "ok") or "-",
               "cpu_ms_per_stream": ms(cpu[name] / total),
               "cpu_us_per_streamed_token": round(cpu[name] / total / h.tokens_per_stream * 1e6, 1)}
        benchmark.extra_info[name] = row
        record(title, name, **row)


@pytest.mark.parametrize("clients", [8, 32])
def test_real_throughput(benchmark: Any, real: Harness, clients: int) -> None:
    _throughput(benchmark, real, clients)


@pytest.mark.parametrize("clients", [8, 32])
def test_fake_throughput(benchmark: Any, fake: Harness, clients: int) -> None:
    _throughput(benchmark, fake, clients)


# --------------------------------------------------------------------------- paced tokens


def test_fake_cpu_per_paced_token(benchmark: Any, fake: Harness) -> None:
    """16 streams at a time, tokens 5 ms apart, at two stream lengths: what a token costs the
    serving process is the slope between them; the intercept is the stream's own cost
    (connections, head, routing), which the old figure (CPU / 32 tokens) spread over its tokens."""
    names = [n for n in fake.targets if n.endswith("-paced")]
    per_stream: dict[tuple[str, int], float] = {}

    def run_all() -> None:
        for name in names:
            for tokens, per_client in PACED_STREAMS:
                t = replace(fake.targets[name], max_tokens=tokens)
                before = cpu_seconds(t.pid)
                _, outcome = fake.run(_load(fake, t, 16, per_client))
                assert outcome["ok"] == 16 * per_client, outcome
                per_stream[name, tokens] = (cpu_seconds(t.pid) - before) / outcome["ok"]

    benchmark.group = "peers (fake): CPU per paced token"
    benchmark.pedantic(run_all, rounds=1, iterations=1)
    (short, _), (long, _) = PACED_STREAMS
    for name in names:
        token = (per_stream[name, long] - per_stream[name, short]) / (long - short)
        row = {"cpu_us_per_token": round(token * 1e6, 1),
               "cpu_us_per_stream_besides_tokens": round((per_stream[name, short] - short * token) * 1e6, 1),
               f"cpu_us_per_token_of_{short}_token_streams": round(per_stream[name, short] / short * 1e6, 1)}
        benchmark.extra_info[name] = row
        record(f"peers (fake upstream): CPU per token, 5 ms apart, 16 streams of {short} and of {long} "
               "tokens (slope)", name, **row)


# --------------------------------------------------------------------------- idle RSS


def test_real_idle_rss(benchmark: Any, real: Harness) -> None:
    rss: dict[str, float] = {}

    def measure() -> None:
        for name, t in real.targets.items():
            rss[name] = round(proc_status_kb(t.pid, "VmRSS") / 1024, 1)

    benchmark.group = "peers (real): idle RSS"
    benchmark.pedantic(measure, rounds=1, iterations=1)
    for name, value in rss.items():
        benchmark.extra_info[name] = value
        record("peers (real upstream): idle RSS of the serving process (children excluded)", name,
               rss_mb=value, note="holds the model" if name == "direct" else "")


# --------------------------------------------------------------------------- swaps


def _swapper_over(tmp: Path, binary: str, flags: list[str], files: dict[str, Path]) -> Server:
    """A swapper holding one of two models at a time (sets only_a / only_b)."""
    lines = ["healthCheckTimeout: 60", "models:"]
    for name, path in files.items():
        lines += [f"  {name}:", f'    cmd: "{binary} -m {path} --host 127.0.0.1 --port ${{PORT}} '
                                f'{" ".join(flags)} --alias {name}"']
    lines += ["matrix:", "  vars: {a: a, b: b}", "  sets:", '    only_a: "a"', '    only_b: "b"']
    config = tmp / "swapper.yaml"
    config.write_text("\n".join(lines) + "\n")
    port = free_port()
    return start_server([sys.executable, "-m", "swapper", "-c", str(config), "--listen",
                         f"127.0.0.1:{port}", "--runtime-dir", str(tmp / "swapper-run")], port,
                        tmp / "swapper.log")


def _swap_rig_swapper(tmp: Path, binary: str, flags: list[str], model: Path) -> Server:
    return _swapper_over(tmp, binary, flags, {"a": model, "b": model.with_name("tiny-agent.gguf")})


def _router_over(tmp: Path, binary: str, flags: list[str], directory: Path) -> Server:
    port = free_port()
    return start_server([binary, "--models-dir", str(directory), "--models-max", "1",
                         "--host", "127.0.0.1", "--port", str(port), *flags], port,
                        tmp / "router.log")


def _swaps(benchmark: Any, real: Harness, router: str, swapper: Server, files: dict[str, Path],
           rounds: int, label: str) -> None:
    """Alternate two models through the router and the swapper, against raw spawns.

    A raw spawn: Popen from this process, ``/health`` polled every 5 ms (as in
    bench_cold_start; polling faster slows a loading llama-server), then the request.
    Like each proxy's child, a raw server stays up until the next raw round, which stops it
    right before its spawn: every load then starts with the same servers resident and its
    predecessor's memory just freed (on this VM, memory freed a second earlier costs several
    times more to fault in again: RESULTS 6.12). ``raw+stop`` adds that stop, which a swap
    also makes.
    """
    direct_argv = _argv_of(real.targets["direct"].pid)
    rig = Rig(direct_argv[0], files, swapper, real.loop, real.session,
              flags=tuple(_shared_flags(direct_argv)), hold_raw=True)
    times: dict[str, list[float]] = {"raw": [], "raw+stop": [], "router": [], "swapper": []}

    async def through(base: str, model: str) -> float:
        body = json.dumps({"model": model, "max_tokens": 4, "stream": True,
                           "messages": [{"role": "user", "content": "Say hello"}]}).encode()
        start = time.perf_counter()
        replied, resp = await first_chunk(real.session, base + CHAT, body)
        await finish(resp)
        return replied - start

    async def run() -> None:
        try:
            for i in range(rounds + 2):
                name = "ab"[i % 2]
                row = {"raw": await rig.raw_round(name)}
                row["raw+stop"] = rig.last_stop + row["raw"]
                await rig.cleanup()
                row["router"] = await through(router, files[name].stem)
                row["swapper"] = await through(swapper.base, name)
                if i >= 2:  # the first two load each model once
                    for key, value in row.items():
                        times[key].append(value)
        finally:
            await rig.release()

    benchmark.group = f"peers (real): swap, {label}"
    benchmark.pedantic(lambda: real.run(run()), rounds=1, iterations=1)
    raw50, raw95 = p50(times["raw"]), percentile(times["raw"], 95)
    stop50, stop95 = p50(times["raw+stop"]), percentile(times["raw+stop"], 95)
    for name, values in times.items():
        row = {"p50_ms": ms(p50(values)), "p95_ms": ms(percentile(values, 95)),
               "added_p50_ms": ms(p50(values) - raw50), "added_p95_ms": ms(percentile(values, 95) - raw95),
               "added_p50_over_raw+stop_ms": ms(p50(values) - stop50),
               "added_p95_over_raw+stop_ms": ms(percentile(values, 95) - stop95)}
        benchmark.extra_info[name] = row
        record(f"peers (real upstream): swap to first reply, {label}, {rounds} alternating rounds",
               name, **row)


def test_real_swap(benchmark: Any, real: Harness) -> None:
    fast = _model_file(_argv_of(real.targets["direct"].pid))
    files = {"a": fast, "b": fast.with_name("tiny-agent.gguf")}
    _swaps(benchmark, real, real.targets["router"].base, real.servers[-1], files, SWAP_ROUNDS,
           "tiny models (~1 MB)")


def test_real_swap_big(benchmark: Any, real: Harness, tmp_path: Path) -> None:
    """The same with two ~415 MB models (made once into the cache, about 4 s each)."""
    from llmstack.models.tiny_gguf import ensure_tiny_model
    from llmstack.settings import Settings

    directory = Settings.read().cache_dir / "bench-big"
    files = {name: ensure_tiny_model(directory, f"big-{name}", seed=seed, **BIG)
             for seed, name in enumerate("ab", start=1)}
    direct_argv = _argv_of(real.targets["direct"].pid)
    binary, flags = direct_argv[0], _shared_flags(direct_argv)
    router = _router_over(tmp_path, binary, flags, directory)
    swapper = _swapper_over(tmp_path, binary, flags, files)
    try:
        _swaps(benchmark, real, router.base, swapper, files, BIG_SWAP_ROUNDS, "~415 MB models")
    finally:
        stop_server(swapper)
        stop_server(router)
