"""Tiers for every job: embed / rerank roles and validated extra llama-server arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmstack.config.demo import demo_stack
from llmstack.config.ini import ModelsIniError, parse_stack
from llmstack.project.opencode import render
from llmstack.serving.swapper_config import llama_server_argv

TIER = "[e]\nhf_repo = r\nhf_file = f.gguf\n"


def argv(text: str) -> tuple[str, ...]:
    stack = parse_stack(text)
    return llama_server_argv(stack, stack.tiers[0], "llama-server", Path("f.gguf"))


@pytest.mark.parametrize("role, flag", [("embed", "--embeddings"), ("rerank", "--reranking")])
def test_serving_roles_start_llama_server_for_their_job(role: str, flag: str) -> None:
    assert flag in argv(TIER + f"role = {role}\n")
    assert flag not in argv(TIER + "role = fast\n")


def test_llama_server_args_are_split_like_a_shell_and_appended_unrun() -> None:
    args = argv(TIER + """llama_server_args = --pooling mean --override-kv 'a=str:x y' ; c\n""")
    assert args[-4:] == ("--pooling", "mean", "--override-kv", "a=str:x y")
    assert "$(rm -rf /)" in argv(TIER + "llama_server_args = --chat-template '$(rm -rf /)'\n")


@pytest.mark.parametrize("value, message", [
    ("--port 9", "--port is set by llmstack"),
    ("-c 4096", "-c is set by llmstack (use ctx_size)"),
    ("--ctx-size=4096", "--ctx-size is set by llmstack (use ctx_size)"),
    ("--model x.gguf", "--model is set by llmstack (use hf_repo / hf_file, or gguf_path)"),
    ("--host 0.0.0.0", "--host is set by llmstack"),
    ("--pooling 'mean", "No closing quotation"),
    ("pooling mean", "expected llama-server flags"),
])
def test_flags_the_stack_owns_and_bad_quoting_are_refused_with_file_line(value: str, message: str) -> None:
    with pytest.raises(ModelsIniError) as info:
        parse_stack(TIER + f"llama_server_args = {value}\n", "m.ini")
    assert str(info.value).startswith("m.ini:4: [e] llama_server_args: ")
    assert message in str(info.value)


def test_a_hosted_tier_takes_no_llama_server_args() -> None:
    with pytest.raises(ModelsIniError, match="only local"):
        parse_stack("[h]\nmodel = openai/x\nllama_server_args = --pooling mean\n")


def test_the_demo_has_an_embedding_tier_that_is_no_opencode_model() -> None:
    stack = demo_stack()
    embed = stack.first_with_role("embed")
    assert embed is not None and embed.llama_server_args == ("--pooling", "mean")
    assert stack.tier("embeddings") is embed
    models = render(stack, "http://127.0.0.1:1/v1", [])["provider"]
    assert all(embed.name not in p.get("models", {}) for p in models.values())
