"""A project's generated files follow its running stack: reload rewrites them, configure and
start take the running stack's address, and a failed reload fails the shell's eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_STACK_INI, free_port, tiny_stack
from tests.lifecycle.conftest import Cli
from tests.lifecycle.test_lifecycle import _record


def _limits(path: Path, tier: str) -> dict:
    return json.loads(path.read_text())["provider"]["llmstack"]["models"][tier]["limit"]


def _base_url(config_text: str) -> str:
    return json.loads(config_text)["provider"]["llmstack"]["options"]["baseURL"]


@pytest.mark.real
def test_generated_files_follow_the_running_stack_and_reload_rewrites_them(
        cli: Cli, project: Path, cli_env: dict[str, str], tmp_path: Path,
        llama_server_bin: str) -> None:
    env = tiny_stack(tmp_path / "hub")
    ini = project / ".llmstack" / "models.ini"
    ini.write_text(TINY_STACK_INI.read_text())  # tiny models: the demo's tier names and windows
    opencode_json = project / ".llmstack" / "opencode.json"
    port = free_port()
    started = cli("start", "--detach", "--port", str(port), "--models-ini", str(ini), env=env)
    assert started.returncode == 0, started.stderr
    assert _record(project)["models_ini"] == str(ini.resolve())
    banner = (project / ".llmstack" / "logs" / "serve.stderr").read_text()
    assert f"llmstack is serving {ini.resolve()}: fast, agent, plan" in banner, banner
    assert f"http://127.0.0.1:{port}/v1" in banner

    configured = cli("configure", env=env)  # models.ini says nothing of a port: the record does
    assert configured.returncode == 0, configured.stderr
    assert _base_url(opencode_json.read_text()) == f"http://127.0.0.1:{port}/v1"
    demo = cli("configure", "--demo", "--print")
    assert _base_url(demo.stdout) == f"http://127.0.0.1:{port}/v1"
    assert _limits(opencode_json, "plan")["context"] == 4096

    ini.write_text(TINY_STACK_INI.read_text().replace("ctx_size = 4096", "ctx_size = 2048"))  # plan's window
    reloaded = cli("reload", "--shell", "bash", env=env)
    assert reloaded.returncode == 0, reloaded.stderr
    assert "[OK] the stack re-read models.ini" in reloaded.stderr
    assert f"[OK] {opencode_json}" in reloaded.stderr  # it says so
    assert _limits(opencode_json, "plan")["context"] == 2048
    assert _base_url(opencode_json.read_text()) == f"http://127.0.0.1:{port}/v1"

    ini.write_text("[plan]\nctx_size = lots\n")  # a reload the stack refuses: eval fails too
    shell = subprocess.run(
        ["bash", "-c", f'eval "$({sys.executable} -m llmstack reload --shell bash)"; echo "rc=$?"'],
        cwd=project, env={**cli_env, **env}, capture_output=True, text=True, timeout=60)
    assert shell.stdout.strip().endswith("rc=1"), shell.stdout + shell.stderr
    assert "models.ini not reloaded, old config kept" in shell.stderr
    assert _limits(opencode_json, "plan")["context"] == 2048  # untouched
    ini.write_text(TINY_STACK_INI.read_text())

    other = free_port()
    moved = cli("start", "--detach", "--port", str(other), env=env)  # never ignored silently
    assert moved.returncode == 1 and "Traceback" not in moved.stderr
    assert (f"already running (pid {_record(project)['pid']}) at http://127.0.0.1:{port}, not "
            f"http://127.0.0.1:{other}") in moved.stderr and "llmstack restart" in moved.stderr
    demo_wanted = cli("start", "--detach", "--demo", env=env)
    assert demo_wanted.returncode == 1 and "not the demo stack" in demo_wanted.stderr
    same = cli("start", "--detach", env=env)
    assert same.returncode == 0 and "[=] already running" in same.stderr
    assert cli("stop").returncode == 0
