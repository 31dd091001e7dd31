"""``llmstack status`` lists hosted and multi-machine tiers with each backend's health."""

from __future__ import annotations

import io

from llmstack.cli.status import render


def test_status_names_hosted_models_and_backend_health() -> None:
    tier = {"role": "fast", "state": "hosted", "detail": None, "in_flight": 0, "queued": 0,
            "pid": None, "port": None, "rss_mb": None,
            "memory_mb": None, "context": 8192}
    doc = {"project": "/p", "channel": "current", "state": "running", "pid": None,
           "url": "http://127.0.0.1:10101", "base_url": "http://127.0.0.1:10101/v1",
           "opencode_config": "/p/.llmstack/opencode.json", "decisions": [], "swaps": [],
           "memory": {"budget_mb": 0, "resident_mb": 0},
           "tiers": [{**tier, "name": "ultra", "backend": "litellm",
                      "hosted_model": "anthropic/claude-x", "backends": []},
                     {**tier, "name": "team", "backend": "litellm", "hosted_model": "openai/team",
                      "backends": [{"url": "http://a:10101", "healthy": True},
                                   {"url": "http://b:10101", "healthy": False,
                                    "error": "connection refused"}]}]}
    out = io.StringIO()
    render(doc, out)
    text = out.getvalue()
    assert "ultra: hosted anthropic/claude-x" in text
    assert "team: backend http://a:10101 healthy" in text
    assert "team: backend http://b:10101 DOWN (connection refused)" in text
    assert "team: hosted" not in text  # a multi-machine tier shows its backends instead


def test_status_shows_the_saved_sessions_against_the_cap_and_why_the_cache_is_off() -> None:
    doc = {"project": "/p", "channel": "current", "state": "running", "pid": None,
           "url": "http://127.0.0.1:10101", "base_url": "http://127.0.0.1:10101/v1",
           "opencode_config": "/p/.llmstack/opencode.json", "decisions": [], "swaps": [],
           "memory": {"budget_mb": 0, "resident_mb": 0}, "tiers": [],
           "sessions": {"root": "/c/sessions", "max_bytes": 20 * 10**9, "bytes": 412 * 10**6,
                        "sessions": 3, "models": {"agent": {"sessions": 3, "bytes": 412 * 10**6}},
                        "held": {"agent": 1},
                        "off": {"plan": "restores restore nothing with /bin/llama-server (cache_n 0)"}}}
    out = io.StringIO()
    render(doc, out)
    lines = out.getvalue().splitlines()
    assert ("  sessions 3 saved, 412.0 MB of 20.00 GB in /c/sessions; held now: agent 1"
            in lines)
    assert ("  [!] session cache off for plan: restores restore nothing with /bin/llama-server "
            "(cache_n 0)" in lines)
    out = io.StringIO()
    render({**doc, "sessions": None}, out)  # no tier saves sessions: no line about them
    assert "session" not in out.getvalue()
