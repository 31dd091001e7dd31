"""``llmstack serve`` with the fake upstream standing in for llama-server: the app's contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from llmstack.models.tiny_gguf import write_tiny_gguf
from tests.conftest import FAKE_UPSTREAM, free_port, http, start_server, stop_server

INI = """\
[DEFAULT]
threads = 1
memory_budget_mb = 4096

[code-fast]
role = fast
hf_repo = test/tiny
hf_file = fast.gguf
ctx_size = 4096
sampler = temp=0.2

[code-smart]
role = agent
hf_repo = test/tiny
hf_file = smart.gguf
ctx_size = 65536

[extra]
hf_repo = test/tiny
hf_file = not-downloaded.gguf
ctx_size = 4096

[code-ultra]
role = ultra
backend = litellm
model = anthropic/claude-opus-4-20250514
ctx_size = 200000
"""


# Run llmstack as if litellm were not installed (importing it then fails, find_spec says None).
HIDE_LITELLM = ("import runpy, sys; sys.modules['litellm'] = None; "
                "sys.argv[0] = 'llmstack'; runpy.run_module('llmstack', run_name='__main__')")


@pytest.fixture
def stack(tmp_path: Path):
    wrapper = tmp_path / "fake-llama-server"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_UPSTREAM} "$@"\n')
    wrapper.chmod(0o755)
    ini = tmp_path / "models.ini"
    ini.write_text(INI)
    snapshot = tmp_path / "hub" / "models--test--tiny" / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    for seed, name in enumerate(("fast.gguf", "smart.gguf")):  # the fake upstream ignores -m
        write_tiny_gguf(snapshot / name, seed=seed)
    port = free_port()
    server = start_server([sys.executable, "-c", HIDE_LITELLM, "serve", "--port", str(port),
                          "--models-ini", str(ini)], port, tmp_path / "serve.log",
                         {"LLMSTACK_LLAMA_SERVER": str(wrapper), "LLMSTACK_API_KEYS": "sekrit",
                          "HF_HUB_CACHE": str(tmp_path / "hub")},
                         ready_path="/health")
    yield server, ini
    stop_server(server)


def call(server, method: str, path: str, payload: object | None = None, key: str = "sekrit"):
    import urllib.error
    import urllib.request

    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(server.base + path, data=data, method=method,
                                 headers={"authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_api_key_is_required_when_configured(stack) -> None:
    server, _ = stack
    status, _, body = http("GET", server.base + "/v1/models")
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    assert call(server, "GET", "/v1/models", key="wrong")[0] == 401
    assert call(server, "GET", "/v1/models")[0] == 200


def test_models_list_has_auto_first_then_tiers_and_aliases(stack) -> None:
    server, _ = stack
    ids = [m["id"] for m in json.loads(call(server, "GET", "/v1/models")[1])["data"]]
    assert ids[0] == "auto"
    assert {"code-fast", "code-smart", "code-ultra", "fast", "smart", "coder"} <= set(ids)


def test_models_ini_is_served_live(stack) -> None:
    server, ini = stack
    assert call(server, "GET", "/models.ini") == (200, ini.read_bytes())
    ini.write_text(INI + "\n; edited\n")
    assert call(server, "GET", "/models.ini")[1].endswith(b"; edited\n")


def test_bad_requests_are_typed_client_errors(stack) -> None:
    server, _ = stack
    for payload, status in (("[1, 2]", 400), ({"model": 5, "messages": []}, 400),
                            ({"model": "nope", "messages": []}, 404)):
        got, body = call(server, "POST", "/v1/chat/completions", payload)
        assert got == status, body
        assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_the_output_asked_for_is_clamped_before_the_tier_sees_it(stack) -> None:
    """code-fast sets no max_output_tokens: its 4096-token window caps the answer, which is
    what the upstream is asked for and what the answer's header says; an output field that
    is not an integer is the caller's 400 (Anthropic's shape on /v1/messages)."""
    import urllib.request

    server, _ = stack
    hi = [{"role": "user", "content": "hi"}]
    for asked, sent in (({"max_tokens": 32000}, {"max_tokens": 4096}), ({}, {"max_tokens": 4096}),
                        ({"max_completion_tokens": 7}, {"max_completion_tokens": 7})):
        req = urllib.request.Request(
            server.base + "/v1/chat/completions", method="POST",
            data=json.dumps({"model": "fast", "messages": hi, **asked}).encode(),
            headers={"authorization": "Bearer sekrit"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            received = json.loads(resp.read())["received"]
            assert resp.headers["x-llmstack-max-tokens"] == str(next(iter(sent.values())))
        assert {k: received.get(k) for k in sent} == sent and (
            "max_completion_tokens" in asked or "max_completion_tokens" not in received)
    status, body = call(server, "POST", "/v1/chat/completions",
                        {"model": "auto", "messages": hi, "max_tokens": "lots"})
    assert status == 400 and "'max_tokens' must be an integer" in json.loads(body)["error"]["message"]
    status, body = call(server, "POST", "/v1/messages",
                        {"model": "fast", "messages": hi, "max_tokens": 1.5})
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_alias_request_is_served_and_named_after_its_tier(stack) -> None:
    server, _ = stack
    status, body = call(server, "POST", "/v1/chat/completions", {"model": "smart", "messages": []})
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["name"] == "code-smart"


def test_tier_whose_file_is_not_downloaded_says_so(stack) -> None:
    server, _ = stack
    status, body = call(server, "POST", "/v1/chat/completions", {"model": "extra", "messages": []})
    error = json.loads(body)["error"]
    assert status == 503 and error["code"] == "model_not_downloaded"
    assert "test/tiny/not-downloaded.gguf" in error["message"]
    assert "run: llmstack download extra" in error["message"]


def test_hosted_tier_without_litellm_is_a_clear_error_and_auto_skips_it(stack) -> None:
    server, _ = stack
    status, body = call(server, "POST", "/v1/chat/completions", {"model": "code-ultra", "messages": []})
    assert status == 503 and "pip install 'llmstack[hosted]'" in json.loads(body)["error"]["message"]
    status, body = call(server, "POST", "/v1/chat/completions",
                        {"model": "auto", "messages": [{"role": "user", "content": "Say hello"}]})
    assert status == 200  # a short prompt would go to ultra; without litellm it goes to agent
    assert json.loads(body)["choices"][0]["message"]["name"] == "code-smart"


def test_routing_decisions_are_llmstacks_own_metric(stack) -> None:
    """``llmstack_routing_decisions_total{tier, reason}``, registered by llmstack beside the
    swapper's series: one sample per decision, the reason without its numbers."""
    from prometheus_client.parser import text_string_to_metric_families

    server, _ = stack
    for _ in range(2):
        status, _ = call(server, "POST", "/v1/chat/completions",
                         {"model": "auto", "messages": [{"role": "user", "content": "Say hello"}]})
        assert status == 200
    status, body = call(server, "GET", "/metrics")
    samples = [s for family in text_string_to_metric_families(body.decode())
               for s in family.samples if s.name == "llmstack_routing_decisions_total"]
    assert [(set(s.labels), s.labels["tier"], s.value) for s in samples] == [
        ({"tier", "reason"}, "code-smart", 2.0)]
    assert not any(c.isdigit() for c in samples[0].labels["reason"])


def test_serve_without_llama_server_names_the_install_command(tmp_path: Path) -> None:
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "LLMSTACK_CACHE_DIR": str(tmp_path / "empty-cache"),
           "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "llmstack", "serve", "--demo", "--port", "0"],
                            capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert "llmstack install-server" in result.stderr
    assert result.stderr.count("\n") <= 4  # one clear message, not a traceback
