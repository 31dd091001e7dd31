"""models.ini keys for litellm-served tiers, the user's litellm_config.yaml, request building."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from llmstack.config.ini import ModelsIniError, parse_stack
from llmstack.config.litellm_config import read_user_params, tier_params
from llmstack.serving.hosted import chat_params, messages_params, provider_error
from llmstack.serving.multi_machine import Backends
from llmstack.serving.remote_limits import litellm_timeouts, remote_timeouts
from llmstack.settings import Settings
from swapper.config import Timeouts


def problems(text: str) -> list[str]:
    with pytest.raises(ModelsIniError) as info:
        parse_stack(text, "t.ini")
    return str(info.value).splitlines()


def test_backends_make_a_litellm_tier_asking_for_the_same_name() -> None:
    stack = parse_stack("[agent]\nrole = agent\nctx_size = 65536\n"
                        "backends = http://10.0.0.7:10101/, https://b.example:443\n")
    tier = stack.tiers[0]
    assert tier.backend == "litellm" and tier.model == "openai/agent"
    assert tier.backends == ("http://10.0.0.7:10101", "https://b.example:443")
    backends = Backends(tier, {"model": "openai/agent", "extra_headers": {"x": "1"}})
    deployments = backends.deployments()
    assert [d["litellm_params"]["api_base"] for d in deployments] == [
        "http://10.0.0.7:10101/v1", "https://b.example:443/v1"]
    assert deployments[0]["model_info"] == {"id": "http://10.0.0.7:10101"}
    assert deployments[0]["litellm_params"]["extra_headers"] == {"x": "1"}


def test_bad_backends_api_base_and_fallback_are_located() -> None:
    assert problems("[a]\nbackends = http://ok:1, ftp://no\n[b]\nmodel = openai/x\n"
                    "api_base = http://user:pw@host\nfallback = nowhere\n") == [
        "t.ini:2: [a] backends: 'ftp://no': expected an http:// or https:// address such as "
        "http://10.0.0.7:10101 (no credentials in it)",
        "t.ini:5: [b] api_base: 'http://user:pw@host': expected an http:// or https:// address "
        "such as http://10.0.0.7:10101 (no credentials in it)",
        "t.ini:6: [b] fallback: 'nowhere' is not another tier",
    ]
    assert problems("[a]\nhf_repo = o/r\nhf_file = f.gguf\nbackends = http://x:1\n"
                    "backend = gguf\n") == [
        "t.ini:4: [a] backends: a tier with backends is served by those machines; "
        "remove hf_repo/hf_file/gguf_path or backend = gguf"]


def test_api_key_in_models_ini_is_refused_as_a_secret() -> None:
    [line] = problems("[a]\nmodel = openai/x\napi_key = sk-123\n")
    assert "looks like a secret" in line and line.startswith("t.ini:3:")


USER_YAML = """\
# mine
model_list:
  - model_name: ultra   # kept
    litellm_params:
      model: anthropic/old
      api_key: os.environ/MY_KEY
      api_base: https://from-yaml
      unset_ref: os.environ/NOT_SET_ANYWHERE
      extra_headers: {x-team: a}
  - model_name: other
unknown_top_level: 1
"""


def test_the_users_litellm_config_gives_credentials_under_models_ini(tmp_path: Path,
                                                                      monkeypatch) -> None:
    path = tmp_path / "litellm_config.yaml"
    path.write_text(USER_YAML)
    monkeypatch.setenv("MY_KEY", "sk-secret")
    user = read_user_params(path, Settings.read().variables)
    stack = parse_stack("[ultra]\nmodel = anthropic/new\n[plain]\nmodel = openai/x\n"
                        "api_base = http://ini:1/v1\n")
    ultra, plain = stack.tiers
    assert tier_params(ultra, user) == {"model": "anthropic/new", "api_key": "sk-secret",
                                        "api_base": "https://from-yaml",
                                        "extra_headers": {"x-team": "a"}}
    assert tier_params(plain, user) == {"model": "openai/x", "api_base": "http://ini:1/v1"}
    assert path.read_text() == USER_YAML
    assert read_user_params(tmp_path / "missing.yaml") == {}


def test_a_broken_litellm_config_is_a_located_error(tmp_path: Path) -> None:
    path = tmp_path / "litellm_config.yaml"
    path.write_text("model_list:\n  - model_name: a\n    litellm_params: [unclosed\n")
    with pytest.raises(ModelsIniError, match=r"litellm_config.yaml:4: not valid YAML"):
        read_user_params(path)
    path.write_text("model_list: {a: 1}\n")
    with pytest.raises(ModelsIniError, match="model_list: expected a list"):
        read_user_params(path)


def test_request_building_fills_samplers_and_asks_for_usage() -> None:
    """The output fields pass as the app clamped them (llmstack.serving.output_cap)."""
    tier = parse_stack("[t]\nmodel = openai/x\nsampler = temp=0.2, top_k=20, min_p=0.05\n"
                       "max_output_tokens = 100\n").tiers[0]
    base = {"model": "openai/x", "api_key": "k"}
    params = chat_params(tier, base, {"model": "t", "temperature": 1.0, "max_tokens": 100,
                                      "stream": True, "messages": []})
    assert params["temperature"] == 1.0 and params["top_k"] == 20 and params["min_p"] == 0.05
    assert params["max_tokens"] == 100 and params["stream_options"] == {"include_usage": True}
    assert params["model"] == "openai/x" and params["api_key"] == "k"
    assert chat_params(tier, base, {"max_completion_tokens": 50})["max_completion_tokens"] == 50
    assert chat_params(tier, base, {"stream": True, "stream_options": {"include_usage": False}}
                       )["stream_options"] == {"include_usage": False}
    anthropic = messages_params(tier, base, {"max_tokens": 100, "messages": []})
    assert anthropic["max_tokens"] == 100 and anthropic["top_k"] == 20 and "min_p" not in anthropic


def test_provider_errors_map_status_type_and_context_overflow() -> None:
    class RateLimitError(Exception):
        status_code = 429
        body: ClassVar[dict[str, str]] = {"message": "slow", "type": "rate_limit_error"}

    error = provider_error(RateLimitError("slow"), "t")
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "")

    class ContextWindowExceededError(Exception):
        status_code = 400

    error = provider_error(ContextWindowExceededError("too long"), "t")
    assert (error.status, error.type, error.code) == (400, "invalid_request_error",
                                                      "context_length_exceeded")
    error = provider_error(ConnectionError("refused"), "t")
    assert (error.status, error.type) == (502, "server_error")


def test_a_timeout_is_a_504_and_backends_that_refuse_a_503_naming_them() -> None:
    class Timeout(Exception):
        status_code = 408  # litellm's

    error = provider_error(Timeout("litellm.Timeout: Request timed out.\n\nDeployment Info: x"),
                           "t")
    assert (error.status, error.type, error.code) == (504, "timeout_error", "upstream_timeout")
    assert error.message == "tier 't': litellm.Timeout: Request timed out."

    tier = parse_stack("[a]\nbackends = http://x:1, http://y:1\n").tiers[0]
    backends = Backends(tier, {"model": "openai/a"})
    refused = RuntimeError("InternalServerError: Connection error.")
    refused.__context__ = RuntimeError("APIConnectionError")
    refused.__context__.__cause__ = ConnectionRefusedError(111, "Connect call failed")

    class AllCoolingDown(Exception):
        all_deployments_in_cooldown = True

    for exc in (refused, AllCoolingDown("No deployments available")):
        down = backends.unanswered(exc)
        assert down is not None and (down.status, down.code) == (503, "backends_unavailable")
        assert down.headers == {"retry-after": "30"}
        assert "http://x:1, http://y:1" in down.message
    assert backends.unanswered(RuntimeError("a backend's own 500")) is None


def test_remote_tiers_get_the_stack_timeouts_and_a_connect_timeout() -> None:
    stack = parse_stack("[DEFAULT]\nresponse_timeout = 60\n[a]\nmodel = openai/x\n"
                        "idle_timeout = 10\n[b]\nmodel = openai/y\nresponse_timeout = 0\n")
    limits = remote_timeouts(stack, stack.tiers[0])
    assert limits == Timeouts(connect=5, response=60, idle=10)
    given = litellm_timeouts(limits)
    assert (given["timeout"].read, given["timeout"].connect) == (60, 5)
    assert (given["stream_timeout"].read, given["stream_timeout"].connect) == (60, 5)
    assert litellm_timeouts(limits, connect=False) == {"timeout": 60, "stream_timeout": 60}
    unlimited = litellm_timeouts(remote_timeouts(stack, stack.tiers[1]))  # 0: no limit
    assert unlimited["timeout"].read is None and unlimited["stream_timeout"].read is None
    assert unlimited["timeout"].connect == 5


def test_reload_keeps_the_router_of_an_unchanged_multi_machine_tier() -> None:
    from llmstack.serving.hosted import HostedTiers

    text = "[a]\nbackends = http://x:1\n[b]\nbackends = http://y:1\n"
    old = HostedTiers.build(parse_stack(text))
    routers = {name: object() for name in old.backends}
    for name, backends in old.backends.items():
        backends._router = routers[name]
    new = HostedTiers.build(parse_stack(text.replace("http://y:1", "http://y:2")))
    new.carry_over(old)
    assert new.backends["a"]._router is routers["a"]  # unchanged: same Router, same state
    assert new.backends["b"]._router is None  # changed: a new Router on first use
