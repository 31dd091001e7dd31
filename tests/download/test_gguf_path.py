"""A local GGUF file as a tier (``gguf_path``): read, checked, never downloaded, served, shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmstack.config.ini import ModelsIniError, parse_stack
from llmstack.project.opencode import provider_timeouts_ms

from ..conftest import free_port, http
from .conftest import Project
from .fake_hub import FakeHub


def test_gguf_path_is_relative_to_models_ini_and_excludes_a_hub_file(tmp_path: Path) -> None:
    source = tmp_path / "proj" / ".llmstack" / "models.ini"
    stack = parse_stack("[a]\ngguf_path = ../models/a.gguf\n[b]\ngguf_path = /srv/b.gguf\n",
                        str(source))
    a, b = stack.tiers
    assert (a.backend, a.gguf_path) == ("gguf", str(tmp_path / "proj" / "models" / "a.gguf"))
    assert b.gguf_path == "/srv/b.gguf" and a.hf_repo_next is None
    with pytest.raises(ModelsIniError) as both:
        parse_stack("[a]\ngguf_path = a.gguf\nhf_repo = o/r\nhf_file = f.gguf\n", "m.ini")
    assert str(both.value) == ("m.ini:2: [a] gguf_path: a tier's file is gguf_path or hf_repo + "
                               "hf_file, not both (remove hf_repo, hf_file)")
    with pytest.raises(ModelsIniError, match=r"m.ini:2: \[a\] gguf_path: '~/a.gguf': ~ is not "
                                             r"expanded here"):
        parse_stack("[a]\ngguf_path = ~/a.gguf\n", "m.ini")


def test_opencode_timeouts_count_a_local_files_size(tmp_path: Path) -> None:
    big = tmp_path / "big.gguf"
    with big.open("wb") as out:
        out.truncate(45 * 2**30)  # sparse: 45 GiB read at 100 MB/s, plus 2 minutes
    stack = parse_stack(f"[a]\nrole = agent\ngguf_path = {big}\nctx_size = 32768\n", "m.ini")
    assert provider_timeouts_ms(stack) == {"headerTimeout": 590_000, "chunkTimeout": 590_000}


def _local_project(project: Project, gguf: bytes) -> Path:
    """models.ini with one good local tier and three broken ones; returns the good file."""
    models = project.root / "models"
    models.mkdir()
    good = models / "tiny.gguf"
    good.write_bytes(gguf)
    (models / "notes.txt").write_text("not a model\n")
    os.mkfifo(models / "fifo.gguf")  # reading it would block: check never opens it
    project.write_ini("[DEFAULT]\nthreads = 1\nn_gpu_layers = 0\nflash_attn = auto\n"
                      "cache_type_k = f16\ncache_type_v = f16\n\n"
                      "[local]\nrole = fast\ngguf_path = ../models/tiny.gguf\nctx_size = 2048\n\n"
                      "[gone]\ngguf_path = ../models/gone.gguf\n\n"
                      "[text]\ngguf_path = ../models/notes.txt\n\n"
                      f"[fifo]\ngguf_path = {models / 'fifo.gguf'}\n")
    return good


def test_check_and_download_handle_local_files(project: Project, hub: FakeHub,
                                               ggufs: list[bytes]) -> None:
    good = _local_project(project, ggufs[0])
    check = project.run("check", HF_HUB_OFFLINE="1")
    assert check.returncode == 1
    rows = {line.split()[0]: line for line in check.stdout.splitlines()[1:5]}
    assert " present " in rows["local"] and str(good) in rows["local"]
    assert "805.9 kB, local file" in rows["local"]
    assert " missing " in rows["gone"] and "no such file (gguf_path)" in rows["gone"]
    assert " invalid " in rows["text"] and "not a GGUF file" in rows["text"]
    assert " invalid " in rows["fifo"] and "not a regular file" in rows["fifo"]
    assert "[!] 3 of 4 tiers not ready" in check.stdout
    done = project.run("download")
    assert done.returncode == 0, done.stderr
    assert f"[=] local files (gguf_path), nothing to download: local ({good})" in done.stderr
    assert "[=] no hub files to download" in done.stderr and not hub.requests


@pytest.mark.real
def test_a_local_file_is_served_and_status_names_it(
        project: Project, ggufs: list[bytes], llama_server_bin: str) -> None:
    good = _local_project(project, ggufs[0])
    port = free_port()
    env = {**project.env, "LLMSTACK_LLAMA_SERVER": llama_server_bin}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmstack", *args], cwd=project.root,
                              env=env, capture_output=True, text=True, timeout=120, check=False)

    started = cli("start", "--detach", "--port", str(port))
    assert started.returncode == 0, started.stderr
    try:
        base = f"http://127.0.0.1:{port}"
        status, _, body = http("POST", base + "/v1/chat/completions", {
            "model": "local", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, body
        assert json.loads(body)["choices"][0]["message"]["name"] == "local"
        status, _, body = http("POST", base + "/v1/chat/completions", {
            "model": "gone", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        error = json.loads(body)["error"]
        assert (status, error["code"]) == (503, "model_not_downloaded")
        gone = good.with_name("gone.gguf")
        assert error["message"] == f"tier 'gone': {gone} (gguf_path) is not a file on this machine"
        shown = cli("status")
        assert shown.returncode == 0, shown.stderr
        assert f"local: gguf_path {good}" in shown.stdout
        assert f"[!] gone: {gone} (gguf_path) is not a file on this machine" in shown.stdout
    finally:
        assert cli("stop").returncode == 0
