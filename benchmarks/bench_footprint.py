"""Footprint: idle RSS of ``llmstack serve --demo`` and the wall time of ``llmstack --help``.

* RSS (goal <= 60 MB, no hosted tier): ``llmstack serve --demo`` with
  LLMSTACK_LLAMA_SERVER = a script running the fake upstream (so no heavy
  children), after it answered /health and served one ``auto`` request;
  VmRSS (and VmHWM, the peak) of the llmstack process only, from /proc. For
  scale, in the same run: an idle bare interpreter, and ``python -m swapper``
  serving the same fake after one request.
* ``--help`` (goal <= 50 ms over the interpreter's own start): ``python -m
  llmstack --help`` against ``python -c pass``, same interpreter, runs
  alternating, medians. The ``llmstack`` console script is not installed on
  the benchmark machine, so ``python -m llmstack`` stands in for it (it runs
  the same ``llmstack.cli.main:main``; ``-m`` adds the runpy lookup, well under a
  millisecond).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ms, p50, proc_status_kb, raw_timings, record, write_fake_llama_server

from tests.conftest import ROOT, Server, fake_cmd, free_port, http, start_server, stop_server

GOAL_RSS_MB = 60.0
GOAL_HELP_MS = 50.0
RSS_ROUNDS = 3
HELP_RUNS = 21

pytestmark = pytest.mark.timeout(300)


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def _serve_one_request(server: Server, model: str) -> None:
    status, _, body = http("POST", server.base + "/v1/chat/completions",
                           {"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
    assert status == 200, body[:300]


def _idle_rss(pid: int, settle: float = 0.5) -> tuple[int, int]:
    time.sleep(settle)
    return proc_status_kb(pid, "VmRSS"), proc_status_kb(pid, "VmHWM")


def test_idle_rss_llmstack_serve_demo(benchmark: Any, tmp_path: Path) -> None:
    """Timed: start -> /health 200 -> one auto request answered. Recorded: RSS after it."""
    wrapper = write_fake_llama_server(tmp_path, "--chunks", "16", "--chunk-ms", "0")
    env = {"LLMSTACK_LLAMA_SERVER": str(wrapper), "LLMSTACK_CACHE_DIR": str(tmp_path / "cache"),
           "LLMSTACK_MODELS_INI": str(tmp_path / "no-models.ini")}
    readings: list[tuple[int, int]] = []
    servers: list[Server] = []

    def start_and_serve() -> None:
        port = free_port()
        server = start_server([sys.executable, "-m", "llmstack", "serve", "--demo", "--port", str(port)],
                              port, tmp_path / f"llmstack{len(servers)}.log", env=env)
        servers.append(server)
        _serve_one_request(server, "auto")

    def stop_previous() -> None:
        while servers:
            server = servers.pop()
            readings.append(_idle_rss(server.popen.pid))
            stop_server(server)

    # the first start makes the demo's tiny models; keep it out of the rounds
    start_and_serve()
    stop_previous()
    readings.clear()
    try:
        benchmark.group = "footprint: llmstack serve --demo, start -> first auto reply"
        benchmark.pedantic(start_and_serve, setup=stop_previous, rounds=RSS_ROUNDS, iterations=1)
        stop_previous()
    finally:
        for server in servers:
            stop_server(server)
    rss = max(r for r, _ in readings)
    hwm = max(h for _, h in readings)
    row = {"rounds": len(readings), "vmrss_mb_max": _mb(rss),
           "vmrss_mb_min": _mb(min(r for r, _ in readings)),
           "vmhwm_mb": _mb(hwm), "start_to_first_reply_p50_ms": ms(p50(raw_timings(benchmark))),
           "goal_rss_le_60mb": "met" if _mb(rss) <= GOAL_RSS_MB else "MISSED"}
    benchmark.extra_info.update(row)
    record("footprint: idle RSS after one request (llmstack process only)", "llmstack serve --demo", **row)


def test_idle_rss_for_scale(benchmark: Any, tmp_path: Path) -> None:
    """A bare interpreter and the standalone swapper (same fake), for scale."""
    readings: dict[str, tuple[int, int]] = {}

    def measure() -> None:
        bare = subprocess.Popen([sys.executable, "-c", "import sys, time; print(flush=True); time.sleep(30)"],
                                stdout=subprocess.PIPE, cwd=ROOT)
        try:
            assert bare.stdout is not None
            bare.stdout.readline()
            readings["python (bare interpreter)"] = _idle_rss(bare.pid, 0.1)
        finally:
            bare.kill()
            bare.wait()
            if bare.stdout is not None:
                bare.stdout.close()
        config = tmp_path / "swapper.yaml"
        config.write_text(f'models:\n  fake:\n    cmd: "{fake_cmd("--chunks", "16")}"\n')
        port = free_port()
        swapper = start_server([sys.executable, "-m", "swapper", "-c", str(config), "--listen",
                                f"127.0.0.1:{port}", "--runtime-dir", str(tmp_path / "run")], port,
                               tmp_path / "swapper.log")
        try:
            _serve_one_request(swapper, "fake")
            readings["python -m swapper (one fake model)"] = _idle_rss(swapper.popen.pid)
            fake_pid = int(json.loads(swapper.get("/running")[2])["running"][0]["pid"])
            readings["fake upstream child (aiohttp.web)"] = _idle_rss(fake_pid, 0)
        finally:
            stop_server(swapper)

    benchmark.group = "footprint: reference processes (one timed run)"
    benchmark.pedantic(measure, rounds=1, iterations=1)
    for label, (rss, hwm) in readings.items():
        benchmark.extra_info[label] = {"vmrss_mb": _mb(rss), "vmhwm_mb": _mb(hwm)}
        record("footprint: idle RSS after one request (llmstack process only)", label,
               vmrss_mb_max=_mb(rss), vmhwm_mb=_mb(hwm))


HELP_COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -m llmstack --help": [sys.executable, "-m", "llmstack", "--help"],
}


def _run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def test_help_wall_time(benchmark: Any) -> None:
    """Both commands alternately, HELP_RUNS each (one timed run); medians and the difference."""
    samples: dict[str, list[float]] = {k: [] for k in HELP_COMMANDS}

    def run_all() -> None:
        for _ in range(3):  # warm the page cache and .pyc files
            for argv in HELP_COMMANDS.values():
                _run(argv)
        for i in range(HELP_RUNS):
            for label in (list(HELP_COMMANDS) if i % 2 else list(reversed(HELP_COMMANDS))):
                samples[label].append(_run(HELP_COMMANDS[label]))

    benchmark.group = "footprint: --help wall time (one timed run, alternating)"
    benchmark.pedantic(run_all, rounds=1, iterations=1)
    base = p50(samples["python -c pass"])
    for label, values in samples.items():
        row: dict[str, Any] = {"runs": len(values), "median_ms": ms(p50(values)), "min_ms": ms(min(values)),
                               "max_ms": ms(max(values))}
        if label != "python -c pass":
            row["added_median_ms"] = ms(p50(values) - base)
            row["ratio"] = round(p50(values) / base, 2)
            row["goal_le_50ms"] = "met" if row["added_median_ms"] <= GOAL_HELP_MS else "MISSED"
        benchmark.extra_info[label] = row
        record("footprint: --help wall time (alternating runs)", label, **row)
