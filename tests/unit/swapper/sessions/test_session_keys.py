"""The session cache's keys: what a saved cache depends on, which session a request is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swapper.sessions.keys import (
    PREFIX_CHARS,
    Unsupported,
    cache_key,
    conversation_head,
    parse_argv,
    session_id,
    session_id_from,
    session_key,
    what_changed,
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    binary = tmp_path / "llama-server"
    binary.write_bytes(b"\x7fELF binary")
    binary.chmod(0o755)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF model")
    lora = tmp_path / "adapter.gguf"
    lora.write_bytes(b"GGUF lora")
    return {"binary": binary, "model": model, "lora": lora}


def stack_argv(files: dict[str, Path], *extra: str, port: str = "${PORT}", ctx: str = "8192") -> list[str]:
    """The command line llmstack builds for a tier (stack_config.llama_server_argv)."""
    return [str(files["binary"]), "--host", "127.0.0.1", "--port", port, "-ngl", "99", "-fa", "auto",
            "--jinja", "--cache-type-k", "f16", "--cache-type-v", "f16", "--threads", "1",
            "--no-warmup", "-lm", "none", "-m", str(files["model"]), "--alias", "agent", "-c", ctx,
            "-n", "256", "--temp", "0.7", *extra]


def key_of(argv: list[str], env: dict[str, str] | None = None) -> str:
    return cache_key(parse_argv(argv, env or {})).hex


def test_the_key_keeps_kv_shaping_flags_and_drops_the_rest(files: dict[str, Path]) -> None:
    kv = parse_argv(stack_argv(files, "--api-key", "sekret", "--log-colors", "on", "-np", "2"), {})
    assert kv.model == str(files["model"])
    assert kv.args == ("-ngl", "99", "-fa", "auto", "--cache-type-k", "f16", "--cache-type-v", "f16",
                       "-c", "8192", "-np", "2")
    assert kv.api_key == "sekret"
    assert "sekret" not in str(cache_key(kv).record)


def test_port_threads_alias_and_samplers_do_not_change_the_key(files: dict[str, Path]) -> None:
    base = key_of(stack_argv(files))
    assert key_of(stack_argv(files, port="41234")) == base
    changed = stack_argv(files, port="5")
    changed[changed.index("--threads") + 1] = "8"
    changed[changed.index("--temp") + 1] = "0.1"
    assert key_of(changed) == base


@pytest.mark.parametrize("extra", [("-np", "2"), ("--kv-unified",), ("--swa-full",),
                                   ("--rope-scaling", "yarn"), ("--override-kv", "a=int:1")])
def test_kv_flags_and_unknown_flags_change_the_key(files: dict[str, Path], extra: tuple[str, ...]) -> None:
    assert key_of(stack_argv(files, *extra)) != key_of(stack_argv(files))


def test_the_window_cache_types_and_flash_attention_change_the_key(files: dict[str, Path]) -> None:
    base = stack_argv(files)
    assert key_of(stack_argv(files, ctx="4096")) != key_of(base)
    for flag, value in (("-fa", "off"), ("--cache-type-k", "q8_0"), ("-ngl", "0")):
        changed = list(base)
        changed[changed.index(flag) + 1] = value
        assert key_of(changed) != key_of(base), flag


def test_a_changed_model_binary_or_adapter_file_changes_the_key(files: dict[str, Path]) -> None:
    argv = stack_argv(files, "--lora", str(files["lora"]))
    before = key_of(argv)
    for name in ("model", "binary", "lora"):
        stat = files[name].stat()
        os.utime(files[name], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        after = key_of(argv)
        assert after != before, name
        before = after


def test_llama_arg_environment_shapes_the_key_but_secrets_stay_out(files: dict[str, Path]) -> None:
    argv = stack_argv(files)
    assert key_of(argv, {"LLAMA_ARG_CTX_SIZE": "4096"}) != key_of(argv)
    assert key_of(argv, {"LLAMA_ARG_PORT": "9", "PATH": "/x"}) == key_of(argv)
    kv = parse_argv(argv, {"LLAMA_API_KEY": "k1", "LLAMA_ARG_HF_TOKEN": "t1"})
    assert kv.api_key == "k1"
    assert "k1" not in str(cache_key(kv).record) and "t1" not in str(cache_key(kv).record)


@pytest.mark.parametrize(("extra", "env", "reason"), [
    (("--mmproj", "p.gguf"), {}, "multimodal projector"),
    (("-hf", "org/repo"), {}, "not a local file"),
    (("--slot-save-path", "/tmp"), {}, "its own --slot-save-path"),
    (("--no-cache-prompt",), {}, "prompt caching is off"),
    (("--no-slots",), {}, "slots endpoint is off"),
    ((), {"LLAMA_ARG_MMPROJ": "p.gguf"}, "multimodal projector"),
])
def test_children_that_cannot_take_part_say_why(files: dict[str, Path], extra: tuple[str, ...],
                                                env: dict[str, str], reason: str) -> None:
    with pytest.raises(Unsupported, match=reason):
        parse_argv(stack_argv(files, *extra), env)


def test_a_missing_model_or_binary_is_unsupported(files: dict[str, Path]) -> None:
    argv = stack_argv(files)
    files["model"].unlink()
    with pytest.raises(Unsupported, match=r"model\.gguf"):
        key_of(argv)
    with pytest.raises(Unsupported, match="not found on PATH"):
        key_of(["no-such-llama-server-binary", "-m", str(files["lora"])])
    with pytest.raises(Unsupported, match="not a local file"):
        parse_argv([str(files["binary"]), "-c", "8"], {})


def test_what_changed_names_the_window(files: dict[str, Path]) -> None:
    old = cache_key(parse_argv(stack_argv(files), {})).record
    new = cache_key(parse_argv(stack_argv(files, ctx="4096"), {})).record
    assert what_changed(old, new) == "the settings changed (was -c 8192, now -c 4096)"
    model_moved = dict(old, model=["/elsewhere", 1, 2])
    assert what_changed(model_moved, old) == "the model file changed"
    assert what_changed({"v": 0}, old) == "the cache format changed"
    assert "settings changed" in what_changed(dict(old, args="hostile"), old)


# -- sessions -------------------------------------------------------------------------------


def test_session_ids_are_bounded_printable_ascii() -> None:
    assert session_id("ses_01JX") == "ses_01JX"
    assert session_id(b"6ce1ab99-795b-49a5") == "6ce1ab99-795b-49a5"
    for bad in ("", "x" * 201, "a b", "tab\t", "é", "../x", None):
        assert session_id(bad) == (None if bad != "../x" else "../x")  # never a file name anyway
    headers = [(b"X-Claude-Code-Session-Id", b"cc-1"), (b"x-session-id", b"bad id")]
    assert session_id_from(headers) == "cc-1"
    assert session_id_from([(b"X-Session-Id", b"ses_1")]) == "ses_1"


def chat(system: str, *turns: str) -> dict:
    messages = [{"role": "system", "content": system}]
    for at, text in enumerate(turns):
        messages.append({"role": "user" if at % 2 == 0 else "assistant", "content": text})
    return {"model": "auto", "messages": messages}


def test_a_conversation_keeps_its_key_as_it_grows() -> None:
    first = session_key(None, chat("You code.", "fix the bug"))
    assert first is not None and len(first) == 32 and set(first) <= set("0123456789abcdef")
    assert session_key(None, chat("You code.", "fix the bug", "done", "thanks")) == first
    assert session_key(None, chat("You plan.", "fix the bug")) != first
    assert session_key(None, chat("You code.", "fix the other bug")) != first


def test_the_client_session_and_the_head_both_count() -> None:
    main = chat("You are opencode.", "refactor x")
    title = chat("Generate a title.", "refactor x")
    assert session_key("ses_1", main) != session_key("ses_1", title)  # opencode's title request
    assert session_key("ses_1", main) != session_key("ses_2", main)
    assert session_key("ses_1", None) is not None
    assert session_key(None, {"messages": [{"role": "system", "content": "x"}]}) is None
    assert session_key(None, {"messages": "not a list"}) is None


def test_anthropic_and_responses_heads() -> None:
    anthropic = {"system": [{"type": "text", "text": "sys", "cache_control": {}}],
                 "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                              {"role": "assistant", "content": "yo"}]}
    assert conversation_head(anthropic) == [["system", "sys"], ["user", "hi"]]
    responses = {"instructions": "sys", "input": "hi"}
    assert conversation_head(responses) == [["system", "sys"], ["user", "hi"]]
    items = {"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                       {"type": "function_call", "name": "f"}]}
    assert conversation_head(items) == [["user", "hi"]]
    assert conversation_head({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}) == [
        ["user", "[image_url]"]]


def test_the_head_is_read_bounded() -> None:
    big = "x" * PREFIX_CHARS
    assert session_key(None, chat("s", big + "tail one")) == session_key(None, chat("s", big + "tail two"))
    many = {"messages": [{"role": "system", "content": str(i)} for i in range(10_000)]
            + [{"role": "user", "content": "late"}]}
    assert conversation_head(many) is None  # the user message is past the messages looked at


def test_a_bare_binary_name_is_found_on_the_childs_path(files: dict[str, Path]) -> None:
    argv = ["llama-server", *stack_argv(files)[1:]]
    key = cache_key(parse_argv(argv, {"PATH": str(files["binary"].parent)}))
    assert key.record["binary"][0] == str(files["binary"].resolve())
    with pytest.raises(Unsupported, match="not found on PATH"):
        cache_key(parse_argv(argv, {"PATH": "/nonexistent"}))
