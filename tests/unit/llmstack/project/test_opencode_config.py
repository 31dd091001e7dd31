"""opencode.json as rendered from the bundled template and the demo stack."""

from __future__ import annotations

import json

import pytest

from llmstack.config.demo import demo_stack
from llmstack.config.ini import bundled_template_text, parse_stack
from llmstack.project.channels import next_stack
from llmstack.project.opencode import (
    COLD_READ_MB_PER_S,
    DEFAULT_DISABLED_PROVIDERS,
    local_base_url,
    provider_timeouts_ms,
    render,
    to_text,
)
from llmstack.settings import Settings

READ_ONLY = {"edit": "deny", "write": "deny", "bash": "deny"}
AGENTS = ["/p/.llmstack/AGENTS.md"]


def template() -> dict:
    stack = parse_stack(bundled_template_text())
    return render(stack, local_base_url(stack), AGENTS)


def test_template_provider_models_and_limits() -> None:
    config = template()
    assert list(config)[:3] == ["$schema", "share", "autoupdate"]
    assert config["share"] == "disabled" and config["autoupdate"] == "notify"
    assert config["disabled_providers"] == list(DEFAULT_DISABLED_PROVIDERS)
    assert config["instructions"] == AGENTS
    assert list(config["provider"]) == ["llmstack"]
    provider = config["provider"]["llmstack"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"]["baseURL"] == "http://127.0.0.1:10101/v1"
    assert provider["options"]["apiKey"] == "sk-no-key-required"
    models = provider["models"]
    assert list(models) == ["auto", "code-fast", "code-smart", "code-ultra", "plan", "plan-uncensored"]
    assert models["code-fast"]["limit"] == {"context": 131072, "output": 8192}
    assert models["code-smart"]["limit"] == {"context": 131072, "output": 32768}
    assert models["plan-uncensored"]["limit"] == {"context": 131072, "output": 16384}
    assert models["auto"]["limit"]["output"] == 8192  # the fast tier's output limit
    assert models["code-smart"]["reasoning"] and models["plan-uncensored"]["reasoning"]
    assert "reasoning" not in models["plan"] and "reasoning" not in models["code-fast"]
    assert all(m["tool_call"] and set(m["cost"].values()) == {0} for m in models.values())
    assert config["model"] == "llmstack/auto" and config["small_model"] == "llmstack/code-fast"


def test_template_agents_are_the_originals_with_read_only_planners() -> None:
    config = template()
    assert list(config["agent"]) == ["build", "plan", "plan-nofilter"]
    assert config["agent"]["build"] == {"model": "llmstack/auto"}
    assert config["agent"]["plan"] == {"model": "llmstack/plan", "permission": READ_ONLY}
    assert config["agent"]["plan-nofilter"] == {"model": "llmstack/plan-uncensored",
                                                "permission": READ_ONLY}
    assert config["command"]["review"]["agent"] == "plan"
    assert config["command"]["nofilter"]["agent"] == "plan-nofilter"
    assert all("$ARGUMENTS" in c["template"] for c in config["command"].values())


def test_no_sampler_setting_reaches_opencode() -> None:
    text = to_text(template())
    for word in ("temperature", '"temp"', "top_p", "top_k", "min_p", "repeat", "rep_pen"):
        assert word not in text
    assert json.loads(text) == template() and text.endswith("}\n")


def test_demo_stack_wiring() -> None:
    stack = demo_stack()
    config = render(stack, local_base_url(stack, 18000), AGENTS)
    models = config["provider"]["llmstack"]["models"]
    assert config["provider"]["llmstack"]["options"]["baseURL"] == "http://127.0.0.1:18000/v1"
    assert list(models) == ["auto", "fast", "agent", "plan"]
    # auto may step up to the largest window (fast's 8192, SmolLM2's own), not agent's 4096
    assert models["auto"]["limit"] == {"context": 8192, "output": 64}
    assert config["small_model"] == "llmstack/fast"
    assert list(config["agent"]) == ["build", "plan"] and list(config["command"]) == ["review"]


def test_timeouts_cover_a_cold_load_of_the_biggest_local_tier() -> None:
    stack = parse_stack(bundled_template_text())
    timeouts = provider_timeouts_ms(stack)
    assert set(timeouts) == {"headerTimeout", "chunkTimeout"}
    biggest_gb = 45  # code-smart
    assert timeouts["headerTimeout"] >= biggest_gb * 1024 / COLD_READ_MB_PER_S * 1000
    assert timeouts["headerTimeout"] == 590_000 == timeouts["chunkTimeout"]
    assert provider_timeouts_ms(next_stack(stack))["headerTimeout"] == 640_000  # 50 GB next file
    # tiny or hosted-only stacks keep opencode's own 300 s default
    assert provider_timeouts_ms(demo_stack())["headerTimeout"] == 300_000
    hosted = parse_stack("[h]\nrole = fast\nmodel = openai/gpt-4o\nctx_size = 8192\n")
    assert provider_timeouts_ms(hosted)["headerTimeout"] == 300_000
    assert template()["provider"]["llmstack"]["options"]["headerTimeout"] == 590_000


def test_environment_knobs_are_read_at_render_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCODE_DISABLED_PROVIDERS", "openai, anthropic")
    monkeypatch.setenv("OPENCODE_INSTRUCTIONS", "/a.md:/b.md")
    monkeypatch.setenv("OPENCODE_SHARE", "manual")
    monkeypatch.setenv("OPENCODE_USERNAME", "dev")
    stack = parse_stack(bundled_template_text())
    config = render(stack, local_base_url(stack), AGENTS, overrides=Settings.read().opencode)
    assert config["disabled_providers"] == ["openai", "anthropic"]
    assert config["instructions"] == ["/a.md", "/b.md"]
    assert config["share"] == "manual" and config["username"] == "dev"


def test_wildcard_bind_is_reached_on_loopback() -> None:
    stack = parse_stack("[DEFAULT]\nhost = 0.0.0.0\nrouter_port = 9000\n"
                        "[h]\nrole = fast\nmodel = openai/gpt-4o\nctx_size = 8192\n")
    assert local_base_url(stack) == "http://127.0.0.1:9000/v1"
