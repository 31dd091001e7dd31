"""The memory budget: models.ini's, else this machine's; one line when the tiers cannot fit it
(serve, start, start --detach, check), and shown with where it came from (status, /api/state)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import free_port, http

from .conftest import Cli

TIER = "[fast]\nrole = fast\nhf_repo = o/fast-GGUF\nhf_file = fast.gguf\nsize_gb = 1\n"
NO_SERVER_RUNS = {"LLMSTACK_LLAMA_SERVER": "/bin/true"}  # the tier's file is absent: never run


def test_a_budget_too_small_is_one_line_naming_the_key_at_serve_start_and_check(
        project: Path, cli: Cli, tmp_path: Path) -> None:
    ini = project / ".llmstack" / "models.ini"
    ini.write_text("[DEFAULT]\nthreads = 1\nmemory_budget_mb = 100   ; too small\n\n" + TIER)
    env = {**NO_SERVER_RUNS, "HF_HOME": str(tmp_path / "hf")}
    line = re.compile(r"\[!\] \S*models\.ini:3: \[DEFAULT\] memory_budget_mb: fast needs 1024 MB, "
                      r"924 MB over the budget of 100 MB \(from models\.ini\); raise "
                      r"memory_budget_mb, or lower ctx_size or use smaller files \(quant\)")
    port = str(free_port())
    for args, code in ((("serve", "--port", port), 2), (("start", "--port", port), 2)):
        done = cli(*args, env=env)
        assert done.returncode == code, done.stderr
        assert line.fullmatch(done.stderr.strip()), done.stderr
    detached = cli("start", "--detach", "--port", port, env=env)
    assert detached.returncode == 1
    assert "Traceback" not in detached.stderr
    refusal = detached.stderr.strip().splitlines()[-1]
    assert refusal.startswith("[!] llmstack serve exited with status 2 before answering: ")
    assert line.search("[!] " + refusal.split("answering: ", 1)[1]), refusal
    check = cli("check", env=env)
    assert check.returncode == 1
    assert any(line.fullmatch(row) for row in check.stdout.splitlines()), check.stdout


def _physical_mb() -> int:
    kib = re.search(r"^MemTotal:\s+(\d+) kB$", Path("/proc/meminfo").read_text(), re.MULTILINE)
    assert kib is not None
    return int(kib[1]) // 1024


def test_an_unset_budget_is_this_machines_and_status_shows_where_it_came_from(
        project: Path, cli: Cli, tmp_path: Path) -> None:
    (project / ".llmstack" / "models.ini").write_text(
        "[DEFAULT]\nthreads = 1\nn_gpu_layers = 0\n\n" + TIER.replace("size_gb = 1", "size_gb = 0.01"))
    physical = _physical_mb()
    budget = physical - max(round(physical * 0.1), 2048)
    source = f"detected: {physical / 1024:.1f} GiB physical - {(physical - budget) / 1024:.1f} GiB reserve"
    port = free_port()
    env = {**NO_SERVER_RUNS, "HF_HOME": str(tmp_path / "hf")}
    started = cli("start", "--detach", "--port", str(port), env=env)
    assert started.returncode == 0, started.stderr
    try:
        _, _, body = http("GET", f"http://127.0.0.1:{port}/api/state")
        memory = json.loads(body)["memory"]
        assert (memory["budget_mb"], memory["budget_source"]) == (budget, source)
        shown = cli("status", env=env)
        assert f" of {budget} MB ({source})" in shown.stdout, shown.stdout
        check = cli("check", env=env)
        assert (f"[OK] memory: every tier and residency set fits the budget of {budget} MB "
                f"({source})") in check.stdout
    finally:
        assert cli("stop").returncode == 0
