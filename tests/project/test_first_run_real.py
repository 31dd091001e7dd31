"""A newcomer's first run: `llmstack serve --demo`, then the README's curl, on the real llama-server."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, http, stop_server
from tests.project.conftest import serve_in

pytestmark = pytest.mark.real


def readme_curl() -> tuple[str, dict]:
    """The path and JSON body of the first chat curl in the README's "Try it"."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"curl -s http://127\.0\.0\.1:10101(/v1/chat/completions) \\\n\s*-d '([^']+)'", text)
    assert match, "the README shows a chat completion curl"
    return match.group(1), json.loads(match.group(2))


def test_readme_demo_curl_answers_in_under_a_second(tmp_path: Path, llama_server_bin: str) -> None:
    port = free_port()
    # a fresh cache: the tiny models are made during this start, as on a newcomer's machine
    server = serve_in(tmp_path, port, tmp_path / "serve.log",
                      {"LLMSTACK_LLAMA_SERVER": llama_server_bin,
                       "LLMSTACK_CACHE_DIR": str(tmp_path / "cache")}, "--demo",
                      ready_path="/running")
    try:
        path, body = readme_curl()
        assert "max_tokens" not in body  # the cap comes from the demo's max_output_tokens
        start = time.monotonic()
        status, _, raw = http("POST", server.base + path, body)
        elapsed = time.monotonic() - start
        answer = json.loads(raw)
        assert status == 200, answer
        assert 0 < answer["usage"]["completion_tokens"] <= 64
        assert elapsed < 1.0, f"the README's demo curl took {elapsed:.2f} s"
        print(f"README demo curl: {elapsed * 1000:.0f} ms, "
              f"{answer['usage']['completion_tokens']} tokens")
    finally:
        stop_server(server)
    output = server.output()
    assert "llmstack is serving the built-in DEMO stack" in output
    assert "gguf" not in output.lower().replace(".gguf", "")  # no gguf-writer INFO lines
