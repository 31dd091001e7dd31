"""``llmstack setup`` states what it would download and asks first (real CLI, fake hub)."""

from __future__ import annotations

import subprocess

import pytest

from ..conftest import free_port
from .conftest import CLI, REPO, Project, tier_ini
from .fake_hub import FakeHub

SIZED = "size_gb = 0.0008\n"
PROMPT = b"now? [y/N] "


def _two_tiers(project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "a.gguf", ggufs[0])
    hub.add(REPO, "b.gguf", ggufs[1])
    ini = f"[DEFAULT]\nrouter_port = {free_port()}\n\n" + tier_ini(("fast", "a.gguf"),
                                                                    ("agent", "b.gguf"))
    project.write_ini(ini.replace("hf_file = a.gguf\n", "hf_file = a.gguf\nrole = fast\n" + SIZED)
                      .replace("hf_file = b.gguf\n", "hf_file = b.gguf\nrole = agent\n" + SIZED))


def _on_a_terminal(project: Project, answer: bytes, *args: str, **env: str) -> tuple[int, str]:
    """``llmstack setup`` on a pseudo-terminal; ``answer`` is typed once the question shows."""
    return project.run_tty("setup", *args, answer=(PROMPT, answer + b"\n"), **env)


def test_with_no_terminal_setup_writes_the_files_states_the_total_and_downloads_nothing(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    _two_tiers(project, hub, ggufs)
    done = subprocess.run([str(CLI), "setup"], cwd=project.root,
                          env=project.env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "to download: 2 files, about 1.6 MB by models.ini's size_gb" in done.stderr
    assert "fast 800.0 kB, agent 800.0 kB" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("[!] nothing downloaded") and "llmstack setup --yes" in last
    assert "1.6 MB" in last and "Traceback" not in done.stderr
    state = project.root / ".llmstack"
    assert {p.name for p in state.iterdir()} >= {"models.ini", "opencode.json", "AGENTS.md",
                                                 ".gitignore"}
    assert not hub.gets("a.gguf") and not hub.gets("b.gguf")
    assert not project.cache_files() and not (state / "daemon.json").exists()


def test_on_a_terminal_setup_asks_and_a_no_downloads_nothing(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    _two_tiers(project, hub, ggufs)
    status, output = _on_a_terminal(project, b"n")
    assert status == 0, output
    assert "about 1.6 MB" in output and "edit the tiers in" in output
    assert "[=] nothing downloaded" in output and "llmstack setup --yes" in output
    assert not hub.gets("a.gguf") and not project.cache_files()
    assert not (project.root / ".llmstack" / "daemon.json").exists()


@pytest.mark.real
def test_on_a_terminal_a_yes_downloads_and_starts(
        project: Project, hub: FakeHub, ggufs: list[bytes], llama_server_bin: str) -> None:
    _two_tiers(project, hub, ggufs)
    port = free_port()
    env = {"LLMSTACK_LLAMA_SERVER": llama_server_bin}
    try:
        status, output = _on_a_terminal(project, b"y", "--port", str(port), **env)
        assert status == 0, output
        assert "[OK] 2 downloaded" in output and f"127.0.0.1:{port}" in output
        assert "[OK] ready" in output
        assert len(hub.gets("a.gguf")) == 1 and len(hub.gets("b.gguf")) == 1
        again = project.run("setup", **env)  # everything cached: nothing to ask
        assert again.returncode == 0 and "to download" not in again.stderr, again.stderr
        assert "[=] already running" in again.stderr
    finally:
        project.run("stop")


def test_yes_downloads_without_asking(project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    _two_tiers(project, hub, ggufs)
    # no llama-server: setup gets past the download and fails to start, one line
    env = {"LLMSTACK_LLAMA_SERVER": str(project.root / "no-such-llama-server")}
    done = project.run("setup", "--yes", "--port", str(free_port()), **env)
    assert "about 1.6 MB" in done.stderr and "[OK] 2 downloaded" in done.stderr, done.stderr
    assert "[4/4] start" in done.stderr
