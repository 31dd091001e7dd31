"""The router's input-token estimate against the tokens SmolLM2 reads, on the prompts real
clients send (issue 20, seam 4's "better still": how wrong is chars / 4?).

Each client (the pinned npm installs of ``tests/real/npm_clients.py``) runs once per
configuration, offline with an isolated home, against a capture server on 127.0.0.1 that
records every request body and answers 400 "prompt is too long" (each client then gives up
at once). The configurations: what ``llmstack configure`` prints or writes for the demo
stack, each client's defaults beside it, and the slimmed prompts of
``tests/real/test_clients_real.py``. Each captured body is then measured twice:

* ``estimate``: :func:`llmstack.serving.routing.estimate_tokens` (what ``auto`` routes by);
* ``read``: what llama-server reads for it: the body (non-streaming, output 1 token) goes
  to a llama-server serving SmolLM2 with a 64-token window, which refuses it with its own
  count (``request (N tokens) exceeds the available context size``) before any prefill,
  after applying SmolLM2's chat template (which drops ``tools``).

Run (about a minute; needs npm the first time, and llama-server)::

    python -m pytest benchmarks/bench_estimate.py -p no:cacheprovider --benchmark-only
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import record

from llmstack.cli.install import agents_md_text
from llmstack.config.demo import demo_stack
from llmstack.project.clients import claude_env, codex_catalog, codex_toml
from llmstack.project.opencode import render, to_text
from llmstack.serving.routing import estimate_tokens
from tests.conftest import Server, free_port, start_server, stop_server
from tests.real.npm_clients import CLAUDE_CODE, CODEX, OPENCODE
from tests.real.test_clients_real import (
    CLAUDE_QUIET,
    CLAUDE_SLIM,
    CODEX_NO_RETRIES,
    CODEX_SLIM,
    OPENCODE_SLIM,
    QUESTION,
    exports,
)
from tests.real.test_opencode_real import opencode_env

pytestmark = pytest.mark.timeout(900)
TITLE = "estimate vs tokens SmolLM2 reads (chars/4 router estimate; llama-server's count)"
_COUNT = re.compile(r"request \((\d+) tokens\)")
_OUTPUT_FIELD = {"/v1/messages": "max_tokens", "/v1/responses": "max_output_tokens",
                 "/v1/chat/completions": "max_tokens"}


class Capture(ThreadingHTTPServer):
    """Records ``(path, body)`` of every POST; answers each with a 400 "prompt is too long"
    in the protocol's shape."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CaptureHandler)
        self.bodies: list[tuple[str, dict[str, Any]]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CaptureHandler(BaseHTTPRequestHandler):
    server: Capture

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?", 1)[0]
        self.server.bodies.append((path, json.loads(raw)))
        message = "This model's maximum context length is 64 tokens: prompt is too long"
        error = ({"type": "error", "error": {"type": "invalid_request_error", "message": message}}
                 if path.startswith("/v1/messages") else
                 {"error": {"message": message, "type": "invalid_request_error",
                            "code": "context_length_exceeded"}})
        data = json.dumps(error).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    server = Capture()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: str,
            smollm2_gguf: Path) -> Iterator[Server]:
    """llama-server on SmolLM2 with a 64-token window: it counts a prompt and refuses it."""
    port = free_port()
    server = start_server([llama_server_bin, "-m", str(smollm2_gguf), "-t", "1", "-c", "64",
                           "-np", "1", "--jinja", "--host", "127.0.0.1", "--port", str(port)],
                          port, tmp_path_factory.mktemp("counter") / "llama-server.log")
    yield server
    stop_server(server)


def tokens_read(counter: Server, path: str, body: dict[str, Any]) -> int:
    """The tokens llama-server's SmolLM2 reads for ``body`` on ``path``."""
    body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    body[_OUTPUT_FIELD[path]] = 1
    request = urllib.request.Request(f"{counter.base}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            usage = json.loads(answer.read())["usage"]
            return int(usage.get("input_tokens") or usage["prompt_tokens"])
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        found = _COUNT.search(text)
        assert found, text
        return int(found.group(1))


def run(capture: Capture, argv: list[str], env: dict[str, str], cwd: Path,
        stdin: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The bodies one client run sends."""
    start = len(capture.bodies)
    subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=300, stdin=stdin)
    return capture.bodies[start:]


def measure(benchmark: Any, counter: Server, label: str,
            bodies: list[tuple[str, dict[str, Any]]]) -> None:
    """Record each body's estimate and count (the estimate of the first one timed)."""
    assert bodies, f"{label}: no request captured"
    for index, (path, body) in enumerate(bodies):
        estimate, read = estimate_tokens(body), tokens_read(counter, path, body)
        tools = len(body.get("tools") or ())
        record(TITLE, f"{label} #{index + 1}" if len(bodies) > 1 else label,
               path=path, model=body.get("model"), bytes=len(json.dumps(body)), tools=tools,
               estimate=estimate, read=read, ratio=round(estimate / read, 2))
    benchmark.pedantic(estimate_tokens, args=(bodies[0][1],), rounds=20, iterations=1)


@pytest.mark.parametrize("mode", ["printed", "bare", "slim"])
def test_claude_code(benchmark: Any, capture: Capture, counter: Server, tmp_path: Path,
                     mode: str) -> None:
    claude = CLAUDE_CODE.binary()
    args = {"printed": (), "bare": ("--bare",), "slim": CLAUDE_SLIM}[mode]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           **exports(claude_env(demo_stack(), capture.base)), **CLAUDE_QUIET}
    bodies = run(capture, [str(claude), *args, "--no-session-persistence", "-p", QUESTION,
                           "--output-format", "json"], env, tmp_path)
    measure(benchmark, counter, f"Claude Code 2.1.332, {mode}", bodies)


@pytest.mark.parametrize("mode", ["printed", "no catalog", "slim"])
def test_codex(benchmark: Any, capture: Capture, counter: Server, tmp_path: Path,
               mode: str) -> None:
    codex = CODEX.binary()
    catalog = tmp_path / "codex-models.json"
    catalog.write_text(codex_catalog(demo_stack()))
    config = codex_toml(f"{capture.base}/v1", catalog)
    if mode == "no catalog":
        config = "\n".join(line for line in config.splitlines()
                           if not line.startswith("model_catalog_json")) + "\n"
    (tmp_path / "config.toml").write_text(
        config + CODEX_NO_RETRIES + (CODEX_SLIM if mode == "slim" else ""))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(tmp_path)}
    bodies = run(capture, [str(codex), "exec", "--skip-git-repo-check", "--ephemeral",
                           "--json", QUESTION], env, tmp_path, stdin=subprocess.DEVNULL)
    measure(benchmark, counter, f"Codex 0.171.0, {mode}", bodies)


@pytest.mark.parametrize("mode", ["generated", "slim"])
def test_opencode(benchmark: Any, capture: Capture, counter: Server, tmp_path: Path,
                  mode: str) -> None:
    opencode = OPENCODE.binary()
    project = tmp_path / "project"
    project.mkdir()
    agents = project / "AGENTS.md"
    agents.write_text(agents_md_text())
    config = project / "generated.json"
    config.write_text(to_text(render(demo_stack(), f"{capture.base}/v1", [str(agents)])))
    if mode == "slim":
        (project / "opencode.json").write_text(json.dumps(OPENCODE_SLIM))
    bodies = run(capture, [str(opencode), "run", "--format", "json", QUESTION],
                 opencode_env(tmp_path / "home", config), project)
    measure(benchmark, counter, f"opencode 1.18.33, {mode}", bodies)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-p", "no:cacheprovider", "--benchmark-only"]))
