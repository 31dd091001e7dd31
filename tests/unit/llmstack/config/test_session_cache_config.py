"""models.ini's session cache keys and what reaches the swapper; the YAML's ``sessionCache``."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from llmstack.config.ini import ModelsIniError, parse_stack
from llmstack.models.gguf_info import kv_cache_bytes, read_gguf_info
from llmstack.models.hf_cache import HubCache
from llmstack.models.tiny_gguf import write_tiny_gguf
from llmstack.serving.swapper_config import build_swapper_config
from swapper.config import ConfigError, SessionCacheConfig
from swapper.yaml_config import parse_yaml_config

GGUF = "hf_repo = org/repo\nhf_file = {name}.gguf\n"
TIERS = """
[chat]
role = agent
ctx_size = 4096
max_output_tokens = 64
{chat}
[embed]
role = embed
ctx_size = 512
{embed}
[own]
ctx_size = 4096
{own}
[hosted]
model = openai/gpt-x
ctx_size = 8192
"""


def stack_text(default: str = "", chat: str = "", embed: str = "", own: str = "") -> str:
    tiers = TIERS.format(chat=GGUF.format(name="chat") + chat, embed=GGUF.format(name="embed") + embed,
                         own=GGUF.format(name="own") + own)
    return dedent(f"[DEFAULT]\n{default}\n[ROUTING]\nmid_fidelity_ceiling = 4000\n"
                  f"high_fidelity_ceiling = 1000\n{tiers}")


def enabled(text: str) -> dict[str, bool]:
    stack = parse_stack(text, "t.ini")
    return {t.name: stack.session_cache_for(t) for t in stack.tiers}


def test_on_by_default_for_local_chat_tiers_only() -> None:
    assert enabled(stack_text()) == {"chat": True, "embed": False, "own": True, "hosted": False}


def test_a_tier_overrides_default_either_way() -> None:
    assert enabled(stack_text("session_cache = off", own="session_cache = on")) == {
        "chat": False, "embed": False, "own": True, "hosted": False}
    assert enabled(stack_text(chat="session_cache = false", embed="session_cache = on")) == {
        "chat": False, "embed": True, "own": True, "hosted": False}


@pytest.mark.parametrize(("default", "tier", "message"), [
    ("session_cache = maybe", "", "t.ini:2: [DEFAULT] session_cache: 'maybe': expected true or false"),
    ("session_cache_max_gb = -1", "", "t.ini:2: [DEFAULT] session_cache_max_gb: '-1': expected a "
                                      "size in GB such as 2.5"),
    ("session_cache_min_tokens = 1k", "", "t.ini:2: [DEFAULT] session_cache_min_tokens: '1k': "
                                          "expected a whole number of tokens such as 512"),
    ("", "session_cache_max_gb = 3", "t.ini:13: [chat] session_cache_max_gb: this key belongs in "
                                     "[DEFAULT]"),
])
def test_bad_values_are_file_line_errors(default: str, tier: str, message: str) -> None:
    with pytest.raises(ModelsIniError) as info:
        parse_stack(stack_text(default, chat=tier), "t.ini")
    assert str(info.value) == message


def test_a_hosted_tier_saves_no_sessions() -> None:
    text = stack_text().replace("model = openai/gpt-x", "model = openai/gpt-x\nsession_cache = on")
    with pytest.raises(ModelsIniError) as info:
        parse_stack(text, "t.ini")
    assert str(info.value).endswith("[hosted] session_cache: only local (gguf) tiers save sessions")


def test_what_reaches_the_swapper(tmp_path: Path) -> None:
    stack = parse_stack(stack_text("session_cache_max_gb = 2.5\nsession_cache_min_tokens = 64"), "t.ini")
    model = write_tiny_gguf(tmp_path / "chat.gguf", seed=1)
    config = build_swapper_config(stack, "/bin/llama-server", {"chat": model}, HubCache(tmp_path))
    assert config.session_cache == SessionCacheConfig("", 2_500_000_000, 64)
    chat, embed, own = (config.models[name] for name in ("chat", "embed", "own"))
    assert chat.session_cache and own.session_cache and not embed.session_cache
    info = read_gguf_info(model)
    assert chat.kv_bytes_per_token == kv_cache_bytes(info, 1, "q8_0", "q8_0") + 16
    assert own.kv_bytes_per_token == 0  # not downloaded: learnt from its first save
    assert not config.models["hosted"].session_cache
    # each session keeps its slot (the RAM prompt cache would take idle slots' contexts away)
    assert "--cache-ram" not in embed.cmd
    at = chat.cmd.index("--cache-ram")
    assert chat.cmd[at + 1] == "0" and at < chat.cmd.index("-n")
    mine = parse_stack(stack_text(chat="llama_server_args = --cache-ram 2048"), "t.ini")
    argv = build_swapper_config(mine, "/bin/llama-server", {}, HubCache(tmp_path)).models["chat"].cmd
    assert argv[-2:] == ("--cache-ram", "2048")  # the tier's own comes last: it wins
    default = build_swapper_config(parse_stack(stack_text(), "t.ini"), "/bin/llama-server", {},
                                   HubCache(tmp_path))
    assert default.session_cache == SessionCacheConfig("", 0, 512)  # the cap from the disk


def test_the_yaml_sets_it_per_model_and_where_and_how_much_globally() -> None:
    config = parse_yaml_config(dedent("""
        sessionCache: {dir: ~/saved, maxGB: 1.5, minTokens: 32, colour: red}
        models:
          a: {cmd: "srv --port ${PORT}", sessionCache: true}
          b: {cmd: "srv --port ${PORT}"}
        """), "c.yaml")
    assert config.session_cache == SessionCacheConfig(str(Path("~/saved").expanduser()),
                                                      1_500_000_000, 32)
    assert config.models["a"].session_cache and not config.models["b"].session_cache
    assert config.extra["unsupported"] == ["sessionCache.colour: not supported, ignored"]
    assert parse_yaml_config("models: {}").session_cache == SessionCacheConfig()


@pytest.mark.parametrize(("text", "message"), [
    ("sessionCache: on\nmodels: {}", "c.yaml:1: sessionCache: expected a mapping, got True"),
    ("sessionCache: {maxGB: -2}\nmodels: {}", "c.yaml:1: sessionCache.maxGB: must be >= 0, got -2"),
    ("sessionCache: {minTokens: 1.5}\nmodels: {}",
     "c.yaml:1: sessionCache.minTokens: expected a whole number, got 1.5"),
    ("models:\n  a:\n    cmd: srv ${PORT}\n    sessionCache: maybe",
     "c.yaml:4: models.a.sessionCache: expected true or false, got 'maybe'"),
])
def test_bad_yaml_values_are_file_line_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml_config(text, "c.yaml")
    assert str(info.value) == message
