"""models.ini tiers -> swapper config: llama-server argv, residency from roles, memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmstack.config.demo import demo_stack
from llmstack.config.ini import bundled_template_text, parse_stack
from llmstack.config.schema import SERVING_ROLES
from llmstack.models.hf_cache import HubCache
from llmstack.serving.swapper_config import build_swapper_config, llama_server_argv
from llmstack.settings import Settings
from swapper.config import ConfigError
from swapper.solver import compile_plan

HUB = HubCache(Settings.read().hub_cache)


@pytest.fixture(scope="module")
def template():
    stack = parse_stack(bundled_template_text())
    return stack, build_swapper_config(stack, "/bin/llama-server", {}, HUB)


def test_llama_server_command_line_keeps_the_original_order(template) -> None:
    _, config = template
    argv = list(config.models["code-smart"].cmd)
    assert argv[:5] == ["/bin/llama-server", "--host", "127.0.0.1", "--port", "${PORT}"]
    assert "-lm" in argv and argv[argv.index("-lm") + 1] == "none"  # today's spelling of --no-mmap
    assert argv[argv.index("--alias") + 1] == "code-smart" and argv[argv.index("-c") + 1] == "131072"
    assert argv[-10:] == ["--temp", "0.5", "--top-p", "0.85", "--top-k", "20", "--min-p", "0.05",
                          "--repeat-penalty", "1.05"]
    fast = list(config.models["code-fast"].cmd)
    assert fast[fast.index("--rope-scaling"):fast.index("--rope-scaling") + 6] == [
        "--rope-scaling", "yarn", "--rope-scale", "4", "--yarn-orig-ctx", "32768"]


def test_residency_matrix_from_roles(template) -> None:
    _, config = template
    matrix = config.matrix
    assert matrix is not None
    assert dict(matrix.vars) == {"f": "code-fast", "c": "code-smart", "p": "plan",
                                 "u": "plan-uncensored", "t4": "embed"}
    assert dict(matrix.evict_costs) == {"f": 2, "c": 30, "p": 12, "u": 9, "t4": 1}
    assert dict(matrix.sets) == {"agent_with_fast": "f & c & t4", "plan_with_fast": "f & p & t4",
                                 "plan_uncensored_with_fast": "f & u & t4",
                                 "all_chats_with_fast": "f & p & u & t4"}
    plan = compile_plan(config)
    assert plan.solve("plan", frozenset({"code-fast", "code-smart"})).evict == {"code-smart"}
    assert plan.solve("plan-uncensored", frozenset({"code-fast", "plan"})).evict == frozenset()


def test_role_defaults_preload_and_hosted_tier(template) -> None:
    _, config = template
    assert config.preload == ("code-fast",)
    assert config.models["code-fast"].ttl == 0 and config.models["code-smart"].ttl == 1800
    assert config.models["code-smart"].aliases == ("agent", "smart", "code", "coder")
    ultra = config.models["code-ultra"]
    assert not ultra.has_process  # hosted: costs nothing, never evicted
    assert config.memory_budget_mb == 0  # no budget given: models.ini's, unset


def test_a_stack_whose_sets_cannot_fit_is_refused_with_the_overage() -> None:
    text = bundled_template_text().replace("; memory_budget_mb = 0", "memory_budget_mb = 40000")
    stack = parse_stack(text)
    with pytest.raises(ConfigError, match=r"over memory_budget_mb 40000"):
        compile_plan(build_swapper_config(stack, "/bin/llama-server", {}, HUB))


def test_an_unreadable_gguf_falls_back_to_size_gb(tmp_path: Path) -> None:
    broken = tmp_path / "m.gguf"
    broken.write_bytes(b"GGUF")  # a partial download
    stack = parse_stack(bundled_template_text())
    config = build_swapper_config(stack, "/bin/llama-server", {"code-smart": broken}, HUB)
    assert config.models["code-smart"].memory_mb == 45 * 1024


def test_max_queue_wait_reaches_the_swapper(template) -> None:
    assert template[1].max_queue_wait == 10.0
    text = bundled_template_text().replace("; max_queue_wait = 10", "max_queue_wait = 3")
    config = build_swapper_config(parse_stack(text), "/bin/llama-server", {}, HUB)
    assert config.max_queue_wait == 3.0


def test_max_output_tokens_caps_llama_server_generation() -> None:
    stack = parse_stack("[t]\nrole = fast\nhf_repo = a/b\nhf_file = c.gguf\nctx_size = 8192\n"
                        "max_output_tokens = 77\n[u]\nrole = agent\nhf_repo = a/b\nhf_file = d.gguf\n"
                        "ctx_size = 65536\n")
    with_cap = llama_server_argv(stack, stack.tiers[0], "llama-server", Path("c.gguf"))
    assert with_cap[with_cap.index("-n") + 1] == "77"
    assert "-n" not in llama_server_argv(stack, stack.tiers[1], "llama-server", Path("d.gguf"))
    assert all(0 < t.max_output_tokens <= 128 for t in demo_stack().tiers
               if t.role not in SERVING_ROLES)
