"""Issue 21: a returning agent turn after a swap-back, with and without the session cache.

The whole stack: ``llmstack serve`` with the REAL llama-server (``threads = 1``) and
SmolLM2-135M-Instruct (the ``smollm2_gguf`` fixture) behind two tiers that cannot run together
(``agent``, 8192-token window; ``plan``, 1024). For each session size (~2k and ~6k tokens of
context) and each setting (``session_cache = on`` / ``off``), one server:

1. turn 1 on agent: the whole conversation is read once;
2. a request for plan swaps agent out (with the cache on, agent's slot is saved in that stop:
   ``session_saved``); the swap's eviction is timed from ``swap_started`` to agent's
   ``model_stopped`` (what the save can delay), the whole swap to plan's ``model_ready``;
3. turn 2 on agent, the swap-back: evict plan, load agent, restore the session lazily on this
   first request (``session_restored``), read the new turn; time to its first token, and its
   ``timings`` (``cache_n`` restored, ``prompt_n`` read anew);
4. the bytes under the stack's sessions directory.

Goals (issue 21): the returning turn >= 10x faster than re-reading at ~6k tokens; tokens re-read
after a restore <= 5 % of the prompt; a swap delayed by the save and nothing else; the disk never
over ``session_cache_max_gb``. Nothing here asserts a timing (see conftest). Run::

    python -m pytest benchmarks/bench_session_cache.py -p no:cacheprovider --benchmark-only

(12-15 minutes on the shared 2-core box: a 6k-token prompt takes 2.5-4.5 minutes to read
there, three times; ``-k 2k`` about 2-3 minutes). Figures: ``benchmarks/RESULTS.md`` section 9.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ms, record

from tests.conftest import Server, start_llmstack, stop_server
from tests.real.test_session_cache_stack_real import SNAPSHOT, ini

TITLE = "session cache: returning turn after a swap-back through llmstack serve"
SIZES = {"2k": 2000, "6k": 6000}
CAP_GB = 1
pytestmark = pytest.mark.timeout(1800)


def conversation(tokens: int) -> list[dict[str, str]]:
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
    return history


@dataclass
class Turn:
    first_token_s: float
    text: str
    cache_n: int
    prompt_n: int


def turn(server: Server, model: str, messages: list[dict[str, str]]) -> Turn:
    """One streamed request; the time to its first content token (a swap's keep-alive comments
    before it do not count) and the ``timings`` of its last event."""
    payload = {"model": model, "messages": messages, "stream": True, "max_tokens": 8, "temperature": 0}
    request = urllib.request.Request(server.base + "/v1/chat/completions", json.dumps(payload).encode(),
                                     {"content-type": "application/json"})
    started, first, text = time.monotonic(), 0.0, []
    timings: dict[str, Any] = {}
    with urllib.request.urlopen(request, timeout=1200) as resp:
        for line in resp:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            timings = event.get("timings", timings)
            for choice in event.get("choices") or ():
                if choice.get("delta", {}).get("content"):
                    first = first or time.monotonic() - started
                    text.append(choice["delta"]["content"])
    return Turn(first, "".join(text), int(timings.get("cache_n", -1)), int(timings.get("prompt_n", -1)))


def events(server: Server) -> list[dict[str, Any]]:
    return list(json.loads(server.get("/events")[2]))


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.suffix in (".bin", ".json"))


def scenario(work: Path, hub: Path, binary: str, cache: str, tokens: int) -> dict[str, Any]:
    ini_path = work / "models.ini"
    ini_path.write_text(ini(f"session_cache = {cache}\nsession_cache_max_gb = {CAP_GB}", window=8192))
    server = start_llmstack(work / "serve.log", "--models-ini", str(ini_path), timeout=120, env={
        "LLMSTACK_LLAMA_SERVER": binary, "HF_HUB_CACHE": str(hub),
        "LLMSTACK_CACHE_DIR": str(work / "cache")})
    try:
        body = conversation(tokens)
        first = turn(server, "agent", body)
        turn(server, "plan", [{"role": "user", "content": "hi"}])  # swaps agent out
        returning = [*body, {"role": "assistant", "content": first.text},
                     {"role": "user", "content": "Which module should we refactor first?"}]
        back = turn(server, "agent", returning)  # the swap-back
        seen = events(server)
    finally:
        stop_server(server)
    def at(kind: str, model: str) -> dict[str, Any]:  # the first such event
        return next(e for e in seen if e["kind"] == kind and e.get("model") == model)

    loads = [e for e in seen if e["kind"] == "model_ready" and e["model"] == "agent"]
    saved = [e for e in seen if e["kind"] == "session_saved" and e["model"] == "agent"]
    restored = [e for e in seen if e["kind"] == "session_restored"]
    verdicts = [e["verdict"] for e in seen if e["kind"] == "session_verified"]
    evicted = at("model_stopped", "agent")["ts"]  # the swap's first phase: agent stops (saving)
    return {"session_tokens": back.cache_n + back.prompt_n, "first_read_ms": ms(first.first_token_s),
            "swap_ms": at("model_ready", "plan")["ms"], "save_ms": saved[0]["ms"] if saved else 0.0,
            "evict_ms": round(1000 * (evicted - at("swap_started", "plan")["ts"]), 1),
            "stop_ms": round(1000 * (evicted - at("model_stopping", "agent")["ts"]), 1),
            "after_save_ms": round(1000 * (evicted - saved[0]["ts"]), 1) if saved else 0.0,
            "load_ms": loads[-1]["ms"], "restore_ms": restored[0]["ms"] if restored else 0.0,
            "ttft_back_ms": ms(back.first_token_s), "cache_n": back.cache_n, "prompt_n": back.prompt_n,
            "disk_bytes": disk_bytes(work / "cache" / "sessions"), "verdicts": verdicts}


@pytest.fixture
def rig(tmp_path: Path, llama_server_bin: str, smollm2_gguf: Path) -> Iterator[tuple[str, Path, Path]]:
    hub = tmp_path / "hub"
    (hub / SNAPSHOT).mkdir(parents=True)
    shutil.copy(smollm2_gguf, hub / SNAPSHOT / "smol.gguf")
    yield llama_server_bin, hub, tmp_path


@pytest.mark.parametrize("size", list(SIZES))
def test_returning_turn_after_swap_back(benchmark: Any, rig: tuple[str, Path, Path], size: str) -> None:
    binary, hub, work = rig
    runs: dict[str, dict[str, Any]] = {}

    def run() -> None:
        for cache in ("on", "off"):
            (work / cache).mkdir()
            runs[cache] = scenario(work / cache, hub, binary, cache, SIZES[size])

    benchmark.group = TITLE
    benchmark.pedantic(run, rounds=1, iterations=1)
    on, off = runs["on"], runs["off"]
    assert on["verdicts"] == ["ok"] and off["verdicts"] == [], runs
    assert off["cache_n"] == 0 and on["cache_n"] >= on["session_tokens"] - 30, runs
    figures = {
        "tokens": on["session_tokens"], "disk_MB": round(on["disk_bytes"] / 1e6, 1),
        "cap_MB": CAP_GB * 1000, "bytes_per_token": on["disk_bytes"] // on["session_tokens"],
        "save_ms": on["save_ms"], "swap_on_ms": on["swap_ms"], "swap_off_ms": off["swap_ms"],
        "evict_on_ms": on["evict_ms"], "evict_off_ms": off["evict_ms"],
        "swap_gain_ms": round(on["evict_ms"] - off["evict_ms"], 1),
        "stop_on_ms": on["stop_ms"], "stop_off_ms": off["stop_ms"],
        "stop_after_save_ms": on["after_save_ms"],
        "load_ms": on["load_ms"], "restore_ms": on["restore_ms"],
        "ttft_on_ms": on["ttft_back_ms"], "ttft_off_ms": off["ttft_back_ms"],
        "speedup": round(off["ttft_back_ms"] / on["ttft_back_ms"], 1),
        "reread": on["prompt_n"], "reread_pct": round(100 * on["prompt_n"] / on["session_tokens"], 2),
        "first_read_ms": on["first_read_ms"],
    }
    benchmark.extra_info.update(figures, runs=runs)
    record(TITLE, size, **figures)
