"""`llmstack top` in a real terminal (tmux): it redraws a state change within a second."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Server, wait_until
from tests.ui.conftest import slow_config

Swapper = Callable[..., Server]


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Run tmux commands on a private server socket; that server is killed after the test."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is needed (apt-get install tmux)")
    socket = tmp_path / "tmux.sock"

    def run(*args: str) -> str:
        return subprocess.run(["tmux", "-S", str(socket), *args], check=True,
                              capture_output=True, text=True, timeout=10).stdout

    yield run
    subprocess.run(["tmux", "-S", str(socket), "kill-server"], capture_output=True,
                   timeout=10, check=False)


def model_line(screen: str, model: str) -> str:
    return next((line for line in screen.splitlines() if line.startswith(model + " ")), "")


def test_top_shows_a_state_change_within_one_second(swapper: Swapper,
                                                    tmux: Callable[..., str]) -> None:
    server = swapper(slow_config())
    tmux("new-session", "-d", "-x", "160", "-y", "40", "-c", str(ROOT), "-s", "top")
    tmux("send-keys", "-t", "top",
         f"{sys.executable} -m llmstack top --url {server.base} --interval 0.5", "Enter")

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "top")

    wait_until(lambda: "stopped" in model_line(screen(), "slow"), 15, "top to show slow stopped")
    assert server.post("/api/models/load/slow")[0] == 202
    asked = time.monotonic()
    wait_until(lambda: "starting" in model_line(screen(), "slow"), 1.0,
               "top to show slow starting within 1 s")
    assert time.monotonic() - asked < 1.0
    wait_until(lambda: "ready" in model_line(screen(), "slow"), 15, "top to show slow ready")
    assert "slow evicting nothing" in screen()  # the swap, with what it evicted
    server.post("/v1/chat/completions", {"model": "slow",
                                         "messages": [{"role": "user", "content": "hi"}]})
    wait_until(lambda: "200 first" in screen(), 2, "the request among the last decisions")
    tmux("send-keys", "-t", "top", "q")
    wait_until(lambda: "(q quits)" not in screen(), 5, "q to quit top and restore the screen")
