"""CLI wall time: ``llmstack --help`` and ``llmstack status`` against a running stack.

Whole processes as a user runs them (the ``llmstack`` console script of this
interpreter's environment, else ``python -m llmstack``), each beside ``python -c
pass`` in the same run: the three commands alternate (rotating order), HELP_RUNS
times each after a warm-up, and the medians are compared. Goals (absolute, on this
box): ``--help`` <= 40 ms, ``status`` <= 100 ms; the ratios to the bare interpreter
are what compares across machines.

The stack is ``llmstack start --detach --demo`` in a temporary project, its tiers
served by the fake upstream (so no llama-server burns CPU while ``status`` is timed);
``status`` reads its ``/running`` and ``/v1/models`` and checks its pid record.
Two more rows time ``import http.client`` and ``import httpx`` alone: the reason
``status`` uses the stdlib client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ms, p50, record, rotate, write_fake_llama_server

from tests.conftest import free_port

GOALS_MS = {"llmstack --help": 40.0, "llmstack status": 100.0}
RUNS = 21
WARMUP = 3

pytestmark = pytest.mark.timeout(300)


def _llmstack() -> list[str]:
    script = Path(sys.executable).parent / "llmstack"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmstack"]


def _wall(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, f"{argv} exited {done.returncode}"
    return elapsed


def test_cli_wall_time(benchmark: Any, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".llmstack").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMSTACK_", "OPENCODE_"))}
    env["LLMSTACK_LLAMA_SERVER"] = str(write_fake_llama_server(tmp_path))
    me = _llmstack()
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "llmstack --help": [*me, "--help"], "llmstack status": [*me, "status"],
                # why status speaks http.client: what each client costs to import alone
                "python -c 'import http.client'": [sys.executable, "-c", "import http.client"],
                "python -c 'import httpx'": [sys.executable, "-c", "import httpx"]}
    subprocess.run([*me, "start", "--detach", "--demo", "--port", str(free_port())], cwd=project,
                   env=env, check=True, capture_output=True, timeout=120)
    samples: dict[str, list[float]] = {label: [] for label in commands}
    try:
        def run_all() -> None:
            for _ in range(WARMUP):
                for argv in commands.values():
                    _wall(argv, project, env)
            for i in range(RUNS):
                for label in rotate(list(commands), i):
                    samples[label].append(_wall(commands[label], project, env))

        benchmark.group = "cli: whole-process wall time (one timed run, rotating order)"
        benchmark.pedantic(run_all, rounds=1, iterations=1)
    finally:
        subprocess.run([*me, "stop"], cwd=project, env=env, capture_output=True, timeout=60)
    base = p50(samples["python -c pass"])
    for label, values in samples.items():
        row: dict[str, Any] = {"runs": len(values), "median_ms": ms(p50(values)),
                               "min_ms": ms(min(values)), "max_ms": ms(max(values))}
        if label != "python -c pass":
            row["ratio_to_python"] = round(p50(values) / base, 2)
            row["added_ms"] = ms(p50(values) - base)
        if label in GOALS_MS:
            goal = GOALS_MS[label]
            row[f"goal_le_{goal:.0f}ms"] = "met" if row["median_ms"] <= goal else "MISSED"
        benchmark.extra_info[label] = row
        record("cli: whole-process wall time (rotating runs, medians)", label, **row)
