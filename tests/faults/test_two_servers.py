"""A second server on a running one's port or runtime directory touches nothing of it.

A server holds an exclusive lock on its runtime directory (its children's records)
for its whole life and binds its port before it starts anything: a second one is
refused in one line naming the holder, and the first one's models keep running.
``start --detach`` reports success only when the server answering is the one it
started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmstack.errors import UserError
from llmstack.project.daemon import Target, _wait_ready
from tests.conftest import (
    Server,
    fake_cmd,
    free_port,
    http,
    pid_alive,
    start_llmstack,
    start_server,
    stop_server,
    wait_until,
)
from tests.front_door_support import FAST_INI, fake_stack_env, port_of, swapper_argv

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
PRELOADED = f"models:\n  m:\n    cmd: {fake_cmd()}\nhooks:\n  on_startup:\n    preload: [m]\n"


def model_pids(server: Server) -> dict[str, int]:
    return {model: row["pid"] for model, row in server.running().items() if row["pid"]}


def swapper(tmp_path: Path, runtime: Path, port: int) -> list[str]:
    """``python -m swapper`` on one config preloading a fake model, with ``runtime``."""
    config = tmp_path / "config.yaml"
    config.write_text(PRELOADED)
    return swapper_argv(config, port, runtime)


def first_swapper(tmp_path: Path, runtime: Path) -> Server:
    port = free_port()
    server = start_server(swapper(tmp_path, runtime, port), port, tmp_path / "first.log")
    wait_until(lambda: "m" in model_pids(server), 20, "the first swapper's preload")
    return server


def refused(argv: list[str], env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a server that must refuse to start: within 20 s, one line, exit 1."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env, cwd=cwd)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if "Uvicorn" not in line]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return done


def test_a_second_swapper_on_a_runtime_directory_refuses_and_reaps_nothing(
        tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    first = first_swapper(tmp_path, runtime)
    try:
        before = model_pids(first)
        second = refused(swapper(tmp_path, runtime, free_port()))
        assert second.stderr.startswith(f"error: another swapper serves this config: {runtime} "
                                         f"is held by ")
        assert f"(pid {first.popen.pid})" in second.stderr
        assert model_pids(first) == before and pid_alive(before["m"])
        assert first.post("/v1/chat/completions", CHAT)[0] == 200
    finally:
        stop_server(first)


def test_a_second_swapper_on_a_held_port_fails_before_starting_anything(
        tmp_path: Path) -> None:
    first = first_swapper(tmp_path, tmp_path / "run1")
    port = port_of(first)
    try:
        before = model_pids(first)
        second = refused(swapper(tmp_path, tmp_path / "run2", port))
        assert second.stderr.strip() == (f"error: cannot listen on 127.0.0.1:{port}: "
                                         "Address already in use")
        assert not (tmp_path / "run2" / "children").exists()  # no model was started
        assert model_pids(first) == before
    finally:
        stop_server(first)


@pytest.mark.real
def test_a_second_serve_on_a_running_stacks_port_refuses_and_its_models_live_on(
        tmp_path: Path, llama_server_bin: str) -> None:
    env = {"LLMSTACK_LLAMA_SERVER": llama_server_bin}
    first = start_llmstack(tmp_path / "first.log", "--demo", env=env)
    port = port_of(first)
    try:
        wait_until(lambda: "fast" in model_pids(first), 60, "the demo's fast tier")
        before = model_pids(first)
        argv = [sys.executable, "-m", "llmstack", "serve", "--demo", "--port", str(port)]
        second = refused(argv, env={**os.environ, **env}, cwd=tmp_path)
        assert second.stderr.startswith(f"[!] another llmstack serves port {port}: ")
        assert f"(pid {first.popen.pid})" in second.stderr
        assert model_pids(first) == before and all(pid_alive(p) for p in before.values())
        status, _, _ = first.post("/v1/chat/completions", {
            "model": "fast", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and model_pids(first)["fast"] == before["fast"]
    finally:
        stop_server(first)


def fake_project(root: Path) -> Path:
    (root / ".llmstack").mkdir(parents=True)
    (root / ".llmstack" / "models.ini").write_text(FAST_INI)
    return root


def test_two_projects_racing_start_on_one_port_one_wins_and_the_other_says_who(
        tmp_path: Path) -> None:
    _, env = fake_stack_env(tmp_path / "fake")
    env = {**{k: v for k, v in os.environ.items()
              if not k.startswith(("LLMSTACK_", "OPENCODE_"))}, **env}
    port = str(free_port())
    roots = [fake_project(tmp_path / name) for name in ("a", "b")]
    starts = [subprocess.Popen([sys.executable, "-m", "llmstack", "start", "--detach", "--port",
                                port], cwd=root, env=env, stderr=subprocess.PIPE, text=True)
              for root in roots]
    outputs = [proc.communicate(timeout=120)[1] for proc in starts]
    records = [root / ".llmstack" / "daemon.json" for root in roots]
    try:
        codes = [proc.returncode for proc in starts]
        assert sorted(codes) == [0, 1], outputs
        won = codes.index(0)
        lost = 1 - won
        winner = json.loads(records[won].read_text())["pid"]
        said = [line for line in outputs[lost].splitlines() if line.startswith("[!] ")]
        assert len(said) == 1 and f"(pid {winner})" in said[0], outputs[lost]
        assert outputs[lost].rstrip().endswith(said[0])
        assert not records[lost].exists()
        if "starting llmstack (pid " in outputs[lost]:  # else refused before it started one
            loser = int(outputs[lost].split("starting llmstack (pid ")[1].split(")")[0])
            wait_until(lambda: not pid_alive(loser), 10, "the losing serve to be gone")
        status, _, body = http("GET", f"http://127.0.0.1:{port}/running")
        assert status == 200 and json.loads(body)["pid"] == winner and pid_alive(winner)
    finally:
        for root in roots:
            subprocess.run([sys.executable, "-m", "llmstack", "stop"], cwd=root, env=env,
                           capture_output=True, timeout=60)


def test_start_does_not_take_another_server_answering_on_its_port_for_its_own(
        tmp_path: Path) -> None:
    """The check behind the race: /health answers, but /running names another pid."""
    ini, env = fake_stack_env(tmp_path / "fake")
    other = start_llmstack(tmp_path / "other.log", "--models-ini", str(ini), env=env,
                           ready_path="/health")
    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        target = Target("127.0.0.1", port_of(other), None)
        started = time.monotonic()
        with pytest.raises(UserError) as caught:
            _wait_ready(mine, target, 30, sys.stderr, tmp_path, {})
        assert time.monotonic() - started < 5
        message = str(caught.value)
        assert message.startswith(f"{target.url} is answered by another server, not the "
                                  f"llmstack serve started here (pid {mine.pid}): ")
        assert f"(pid {other.popen.pid})" in message and "\n" not in message
    finally:
        mine.kill()
        mine.wait()
        stop_server(other)
