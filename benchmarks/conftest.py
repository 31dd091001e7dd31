"""Shared helpers for the benchmarks (not part of the default test run).

Run them with::

    python -m pytest benchmarks -p no:cacheprovider --benchmark-only

Files are named ``bench_*.py``; this conftest makes pytest collect them. Every
benchmark compares figures measured side by side in the same run (direct vs
through the proxy, raw spawn vs swap, ...): absolute times on a shared 2-core
box mean little, so nothing here asserts a timing. Each test stores its
side-by-side figures in ``benchmark.extra_info`` (kept by ``--benchmark-json``)
and in :data:`SUMMARY`, printed as one table per benchmark at the end.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so ``tests.conftest`` helpers import from any cwd
    sys.path.insert(0, str(ROOT))

from tests.conftest import FAKE_UPSTREAM, llama_server_bin, smollm2_gguf  # noqa: E402, F401  (fixtures)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# title -> list of (row label, {column: value}); filled by the tests, printed at the end
SUMMARY: dict[str, list[tuple[str, dict[str, Any]]]] = {}


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` (pyproject's python_files only covers test_*.py)."""
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest's python plugin collects it already
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not SUMMARY:
        return
    write = terminalreporter.write_line
    terminalreporter.section("side-by-side benchmark summary")
    for title, rows in SUMMARY.items():
        columns: list[str] = []
        for _, values in rows:
            columns += [c for c in values if c not in columns]
        write("")
        write(f"## {title}")
        write("| " + " | ".join(["row", *columns]) + " |")
        write("|" + "---|" * (len(columns) + 1))
        for label, values in rows:
            write("| " + " | ".join([label, *(fmt(values.get(c, "")) for c in columns)]) + " |")


def record(title: str, label: str, **values: Any) -> None:
    """Add (or replace) one row of a summary table."""
    rows = SUMMARY.setdefault(title, [])
    rows[:] = [r for r in rows if r[0] != label]
    rows.append((label, values))


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


# --------------------------------------------------------------------------- statistics


def p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


def raw_timings(benchmark: Any) -> list[float]:
    """The per-round timings pytest-benchmark recorded (seconds)."""
    return list(benchmark.stats.stats.data)


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads: Linux's per-process CPU clock (the id
    ``clock_getcpuclockid(3)`` returns, which Python does not expose; nanoseconds), else
    utime + stime from /proc/<pid>/stat (10 ms ticks)."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED, process-wide
    except OSError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat(5)


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class CpuMeter:
    """CPU seconds several processes used between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        return self.used


# --------------------------------------------------------------------------- processes


def write_fake_llama_server(directory: Path, *flags: str) -> Path:
    """A script that runs the fake upstream with ``flags`` and llama-server's argv after them."""
    script = directory / "fake-llama-server"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_UPSTREAM}" {" ".join(flags)} "$@"\n')
    script.chmod(0o755)
    return script


def new_loop() -> asyncio.AbstractEventLoop:
    """A client event loop (uvloop when installed, as the servers use)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def rotate(items: Sequence[Any], step: int) -> list[Any]:
    """``items`` rotated by ``step``: interleaved rounds do not always favour the first."""
    step %= len(items)
    return [*items[step:], *items[:step]]
