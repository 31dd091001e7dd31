"""models.ini parsing and strict validation."""

from __future__ import annotations

import configparser
from textwrap import dedent

import pytest

from llmstack.config.ini import ModelsIniError, bundled_template_text, load_stack, parse_stack
from llmstack.config.schema import DEFAULT_ROLE_ALIASES, DEFAULT_ROLE_TTL, DEFAULT_TTL, Stack, Tier
from llmstack.settings import Settings

GGUF = "hf_repo = org/repo\nhf_file = model.gguf\n"
HERETIC = "Mistral-Small-3.2-24B-Instruct-2506-ultra-uncensored-heretic"


def ini(text: str) -> str:
    return dedent(text).lstrip("\n")


def problems(text: str) -> list[str]:
    """The error lines parse_stack reports for this text."""
    with pytest.raises(ModelsIniError) as info:
        parse_stack(ini(text), "t.ini")
    return str(info.value).splitlines()


def tier_text(body: str, name: str = "a") -> str:
    """A one-tier file: line 1 is the header, line 2 the first body line."""
    return f"[{name}]\n{ini(body)}"


# --------------------------------------------------------------------------- bundled template


@pytest.fixture(scope="module")
def bundled() -> Stack:
    return parse_stack(bundled_template_text(), "models.ini")


def test_bundled_defaults_and_routing(bundled: Stack) -> None:
    assert (bundled.host, bundled.router_port, bundled.n_gpu_layers, bundled.flash_attn) == (
        "127.0.0.1",
        10101,
        999,
        "on",
    )
    assert (bundled.jinja, bundled.threads, bundled.cache_type_k, bundled.cache_type_v) == (
        True,
        -1,
        "q8_0",
        "q8_0",
    )
    assert bundled.memory_budget_mb == 0  # unset: detected from the machine
    assert bundled.llama_server_bin is None
    assert (bundled.high_fidelity_ceiling, bundled.mid_fidelity_ceiling, bundled.multi_turn) == (
        12000,
        32000,
        10,
    )
    assert bundled.sticky_sessions is True
    assert [t.name for t in bundled.tiers] == [
        "code-fast",
        "code-smart",
        "code-ultra",
        "plan",
        "plan-uncensored",
        "embed",
    ]


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "code-fast",
            {
                "role": "fast",
                "backend": "gguf",
                "hf_repo": "Qwen/Qwen2.5-Coder-3B-Instruct-GGUF",
                "hf_file": "qwen2.5-coder-3b-instruct-q5_k_m.gguf",
                "hf_file_next": None,
                "ctx_size": 131072,
                "max_output_tokens": 8192,
                "size_gb": 2.5,
                "quant": "Q5_K_M",
                "sampler": (("temp", 0.2),),
                "rope_scaling": (4.0, 32768),
            },
        ),
        (
            "code-smart",
            {
                "role": "agent",
                "backend": "gguf",
                "hf_repo": "unsloth/Qwen3-Coder-Next-GGUF",
                "hf_repo_next": "unsloth/Qwen3-Coder-Next-GGUF",
                "hf_file": "Qwen3-Coder-Next-Q4_K_M.gguf",
                "hf_file_next": "Qwen3-Coder-Next-UD-Q4_K_XL.gguf",
                "ctx_size": 131072,
                "max_output_tokens": 32768,
                "size_gb": 45.0,
                "size_gb_next": 50.0,
                "quant": "Q4_K_M",
                "quant_next": "UD-Q4_K_XL",
            },
        ),
        (
            "code-ultra",
            {
                "role": "ultra",
                "backend": "litellm",
                "model": "anthropic/claude-opus-4-20250514",
                "ctx_size": 200000,
                "max_output_tokens": 8192,
                "sampler": (),
                "hf_repo": None,
            },
        ),
        (
            "plan",
            {
                "role": "plan",
                "backend": "gguf",
                "hf_repo": "unsloth/Qwen3-30B-A3B-Instruct-2507-GGUF",
                "hf_file": "Qwen3-30B-A3B-Instruct-2507-Q4_K_M.gguf",
                "hf_file_next": "Qwen3-30B-A3B-Instruct-2507-Q5_K_M.gguf",
                "ctx_size": 131072,
                "max_output_tokens": 32768,
                "sampler": (("temp", 0.7), ("top_p", 0.8), ("top_k", 20.0), ("min_p", 0.0)),
            },
        ),
        (
            "plan-uncensored",
            {
                "role": "plan-uncensored",
                "backend": "gguf",
                "hf_file": HERETIC + ".i1-Q4_K_M.gguf",
                "hf_file_next": HERETIC + ".i1-Q6_K.gguf",
                "ctx_size": 131072,
                "max_output_tokens": 16384,
                "quant": "i1-Q4_K_M",
                "quant_next": "i1-Q6_K",
                "sampler": (("temp", 0.85), ("top_p", 0.95), ("top_k", 50.0), ("min_p", 0.05)),
            },
        ),
    ],
)
def test_bundled_tiers(bundled: Stack, name: str, expected: dict) -> None:
    tier = bundled.tier(name)
    assert tier is not None
    assert {key: getattr(tier, key) for key in expected} == expected
    assert tier.description and tier.description != name
    assert bundled_template_text().splitlines()[tier.line - 1] == f"[{name}]"


def test_sampler_keeps_file_order(bundled: Stack) -> None:
    smart = bundled.tier("code-smart")
    assert smart is not None
    assert smart.sampler == (
        ("temp", 0.5),
        ("top_p", 0.85),
        ("top_k", 20.0),
        ("min_p", 0.05),
        ("rep_pen", 1.05),
    )
    reordered = parse_stack(tier_text(GGUF + "sampler = rep_pen=1.1 top_k = 5,temp=0.3"))
    assert [name for name, _ in reordered.tiers[0].sampler] == ["rep_pen", "top_k", "temp"]


def test_scanner_agrees_with_configparser() -> None:
    text = bundled_template_text() + ini("""
        [extra]
        Model = a/b ; comment
        quant = x;y
        sampler = temp=0.1,
            top_p=0.9

          top_k=3
        # a comment
        description: colon form
    """)
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";",), comment_prefixes=(";", "#")
    )
    parser.read_string(text)
    stack = parse_stack(text)
    extra = stack.tier("extra")
    assert extra is not None
    assert (extra.model, extra.quant, extra.description) == (
        parser["extra"]["model"],
        parser["extra"]["quant"],
        parser["extra"]["description"],
    )
    assert extra.sampler == (("temp", 0.1), ("top_p", 0.9), ("top_k", 3.0))
    for tier in stack.tiers[:-1]:
        assert tier.description == parser[tier.name]["description"]
        assert tier.ctx_size == parser.getint(tier.name, "ctx_size")
    assert stack.router_port == parser.getint("DEFAULT", "router_port")


def test_inline_comments_need_whitespace_and_full_line_comments() -> None:
    stack = parse_stack(
        ini("""
        # a hash comment
        ; a semicolon comment
        [a]
        hf_repo = org/repo
        quant = Q4;not-a-comment
        hf_file = m.gguf   ; the file
        ctx_size = 4096 ; tokens
        ;ctx_size = 8
    """)
    )
    tier = stack.tiers[0]
    assert (tier.quant, tier.hf_file, tier.ctx_size) == ("Q4;not-a-comment", "m.gguf", 4096)


@pytest.mark.parametrize(
    "body, backend",
    [
        ("backend = gguf\n" + GGUF, "gguf"),
        ("backend = litellm\nmodel = openai/gpt-4o\n", "litellm"),
        ("model = openai/gpt-4o\n", "litellm"),
        (GGUF, "gguf"),
        (GGUF + "model = openai/gpt-4o\n", "litellm"),
        (GGUF + "model =\n", "gguf"),
    ],
)
def test_backend_detection(body: str, backend: str) -> None:
    assert parse_stack(tier_text(body)).tiers[0].backend == backend


def test_keys_are_case_insensitive_and_blank_text_means_unset() -> None:
    stack = parse_stack("[DEFAULT]\nHOST =\n" + tier_text(GGUF + "Description =\nQUANT = Q8_0"))
    assert stack.host == "127.0.0.1"
    assert (stack.tiers[0].description, stack.tiers[0].quant) == ("a", "Q8_0")


def test_model_next_reads_environment_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXT_MODEL", "openai/gpt-5")
    monkeypatch.delenv("UNSET_MODEL", raising=False)
    text = ini("""
        [a]
        model = openai/gpt-4o
        model_next = ${NEXT_MODEL}
        [b]
        model = openai/gpt-4o
        model_next = $UNSET_MODEL
        [c]
        model = openai/gpt-4o
        model_next = openai/gpt-4.1
    """)
    assert [t.model_next for t in parse_stack(text, variables=Settings.read().variables).tiers] == [
        "openai/gpt-5",
        None,
        "openai/gpt-4.1",
    ]


def test_role_defaults_for_aliases_and_ttl() -> None:
    text = "".join(
        tier_text(GGUF + f"role = {role}\n", name)
        for role, name in [
            ("fast", "f"),
            ("agent", "g"),
            ("plan", "plan"),
            ("plan-uncensored", "u"),
            ("ultra", "x"),
        ]
    )
    stack = parse_stack(
        text + tier_text(GGUF + "aliases = mine, other\nttl = 5\n", "y") + tier_text(GGUF, "z")
    )
    by_name = {t.name: t for t in stack.tiers}
    assert by_name["f"].effective_aliases == DEFAULT_ROLE_ALIASES["fast"]
    assert by_name["plan"].effective_aliases == ("planner", "chat")  # its own name is not an alias
    assert by_name["x"].effective_aliases == ("ultra",)
    assert by_name["y"].effective_aliases == ("mine", "other")
    assert by_name["z"].effective_aliases == ()
    assert [by_name[n].effective_ttl for n in "fguxyz"] == [
        DEFAULT_ROLE_TTL["fast"],
        1800,
        1200,
        DEFAULT_TTL,
        5,
        DEFAULT_TTL,
    ]
    assert stack.tier("smart") is by_name["g"]
    assert stack.tier("plan") is by_name["plan"]
    assert stack.tier("other") is by_name["y"]
    assert stack.tier("nope") is None
    assert stack.first_with_role("agent") is by_name["g"]
    assert stack.first_with_role("nope") is None


def test_empty_stack_has_defaults() -> None:
    assert Stack() == parse_stack("", "")
    assert Stack().tier("auto") is None


def test_load_stack(tmp_path) -> None:
    path = tmp_path / "models.ini"
    with pytest.raises(FileNotFoundError):
        load_stack(path)
    path.write_text(tier_text(GGUF))
    stack = load_stack(path)
    assert stack.path == str(path)
    assert stack.tiers == (
        Tier(
            name="a",
            backend="gguf",
            line=1,
            description="a",
            hf_repo="org/repo",
            hf_file="model.gguf",
            hf_repo_next="org/repo",
        ),
    )
    path.write_text(tier_text(GGUF + "ctx_size = 8k\n"))
    with pytest.raises(ModelsIniError, match=f"^{path}:4: "):
        load_stack(path)


# ----------------------------------------------------------------- one test per error kind


def test_error_is_value_error_listing_every_problem_in_line_order() -> None:
    with pytest.raises(ValueError) as info:
        parse_stack(
            tier_text(GGUF + "role = nope\nctx_size = 8k\n") + "[ROUTING]\nmulti_turn = x\n",
            "t.ini",
        )
    error = info.value
    assert isinstance(error, ModelsIniError)
    assert [(e.line, e.section, e.key) for e in error.errors] == [
        (4, "a", "role"),
        (5, "a", "ctx_size"),
        (7, "ROUTING", "multi_turn"),
    ]
    assert str(error).splitlines()[2] == (
        "t.ini:7: [ROUTING] multi_turn: 'x': expected a whole number of user turns such as 10"
    )


@pytest.mark.parametrize("value", ["8k", "-1", "1.5", ""])
def test_integers_must_be_plain_whole_numbers(value: str) -> None:
    assert problems(tier_text(GGUF + f"ctx_size = {value}\n")) == [
        f"t.ini:4: [a] ctx_size: {value!r}: expected a whole number of tokens such as 8192"
    ]


def test_other_number_kinds() -> None:
    assert problems(
        "[DEFAULT]\nrouter_port = 70000\nthreads = -2\njinja = maybe\n"
        + tier_text(GGUF + "size_gb = 2,5\n")
    ) == [
        "t.ini:2: [DEFAULT] router_port: '70000': expected a TCP port (1-65535) such as 10101",
        (
            "t.ini:3: [DEFAULT] threads: '-2': expected a thread count such as 8, "
            "or -1 to let llama-server pick"
        ),
        "t.ini:4: [DEFAULT] jinja: 'maybe': expected true or false",
        "t.ini:8: [a] size_gb: '2,5': expected a size in GB such as 2.5",
    ]


@pytest.mark.parametrize(
    "sampler, message",
    [
        ("temp=-0.5", "temp=-0.5: must be >= 0"),
        ("temp=0.5, top_p=abc", "top_p=abc: 'abc' is not a number"),
        ("temp=nan", "temp=nan: 'nan' is not a number"),
        (
            "tmp=0.5",
            "unknown name 'tmp' (did you mean 'temp'?); known: temp, top_p, top_k, min_p, rep_pen",
        ),
        ("temp 0.5", "'temp': expected name=value pairs such as temp=0.5, top_p=0.9"),
        ("temp=0.5 temp=0.6", "temp is given twice"),
        ("top_k=2.5", "top_k=2.5: must be a whole number"),
    ],
)
def test_bad_sampler(sampler: str, message: str) -> None:
    assert problems(tier_text(GGUF + f"sampler = {sampler}\n")) == [
        f"t.ini:4: [a] sampler: {message}"
    ]


def test_unknown_keys_suggest_the_closest_known_key() -> None:
    text = (
        "[DEFAULT]\nhots = x\n[ROUTING]\nultra_triggers = [ultra]\nmulti_turns = 3\n"
        + tier_text(GGUF + "ctx_sise = 4096\nstatus = ready\n")
    )
    assert problems(text) == [
        "t.ini:2: [DEFAULT] hots: unknown key (did you mean 'host'?)",
        (
            "t.ini:4: [ROUTING] ultra_triggers: unknown key: the ultra triggers are built in: "
            "[ultra] or [opus] anywhere, or ultra: / opus: at the start of a line"
        ),
        "t.ini:5: [ROUTING] multi_turns: unknown key (did you mean 'multi_turn'?)",
        "t.ini:9: [a] ctx_sise: unknown key (did you mean 'ctx_size'?)",
        "t.ini:10: [a] status: unknown key",
    ]


def test_keys_in_the_wrong_section() -> None:
    text = "[DEFAULT]\nctx_size = 4096\nmulti_turn = 3\n" + tier_text(GGUF + "threads = 4\n")
    assert problems(text) == [
        "t.ini:2: [DEFAULT] ctx_size: this key belongs in a tier section",
        "t.ini:3: [DEFAULT] multi_turn: this key belongs in [ROUTING]",
        "t.ini:7: [a] threads: this key belongs in [DEFAULT]",
    ]


@pytest.mark.parametrize(
    "role, message",
    [
        (
            "agnet",
            (
                "unknown role 'agnet' (did you mean 'agent'?); "
                "known roles: fast, agent, ultra, plan, plan-uncensored, embed, rerank"
            ),
        ),
        (
            "",
            "empty role; use one of fast, agent, ultra, plan, plan-uncensored, embed, rerank, "
            "or remove the line",
        ),
    ],
)
def test_bad_role(role: str, message: str) -> None:
    assert problems(tier_text(GGUF + f"role = {role}\n")) == [f"t.ini:4: [a] role: {message}"]


@pytest.mark.parametrize(
    "aliases, message",
    [
        ("", "empty aliases; list names separated by commas, or remove the line"),
        ("a1,,b1", "empty item in 'a1,,b1'; list names separated by single commas"),
        ("x, x", "'x, x' lists the same alias twice"),
        ("my alias", "alias 'my alias' contains whitespace"),
        ("auto", "alias 'auto' is reserved for the router"),
    ],
)
def test_bad_aliases(aliases: str, message: str) -> None:
    assert problems(tier_text(GGUF + f"aliases = {aliases}\n")) == [
        f"t.ini:4: [a] aliases: {message}"
    ]


def test_duplicate_names_and_aliases_across_tiers() -> None:
    text = ini("""
        [code-fast]
        role = fast
        hf_repo = r
        hf_file = f
        [b]
        aliases = fast, code-fast, bee
        hf_repo = r
        hf_file = f
        [c]
        role = fast
        hf_repo = r
        hf_file = f
        [auto]
        hf_repo = r
        hf_file = f
    """)
    assert problems(text) == [
        (
            "t.ini:6: [b] aliases: already taken: "
            "'fast' (used by [code-fast]), 'code-fast' (used by [code-fast])"
        ),
        (
            "t.ini:10: [c] role: default aliases of role fast already taken: "
            "'fast' (used by [code-fast]), 'small' (used by [code-fast]), "
            "'autocomplete' (used by [code-fast]); set aliases = ... for this tier"
        ),
        "t.ini:13: [auto] tier name 'auto' is reserved for the router",
    ]


def test_high_ceiling_must_be_below_mid() -> None:
    assert problems("[ROUTING]\nhigh_fidelity_ceiling = 32000\n") == [
        (
            "t.ini:2: [ROUTING] high_fidelity_ceiling: high_fidelity_ceiling 32000 must be below "
            "mid_fidelity_ceiling 32000"
        )
    ]
    assert problems("[ROUTING]\nmid_fidelity_ceiling = 100\n") == [
        (
            "t.ini:2: [ROUTING] mid_fidelity_ceiling: high_fidelity_ceiling 12000 must be below "
            "mid_fidelity_ceiling 100"
        )
    ]


def test_ceiling_larger_than_the_context_of_its_tier() -> None:
    routing = "[ROUTING]\nhigh_fidelity_ceiling = 20000\nmid_fidelity_ceiling = 40000\n"
    agent = tier_text(GGUF + "role = agent\nctx_size = 32768\n", "smart")
    assert problems(routing + agent) == [
        (
            "t.ini:3: [ROUTING] mid_fidelity_ceiling: 40000 is larger than ctx_size 32768 "
            "of [smart], the tier it routes to"
        )
    ]
    # The high ceiling routes to the ultra tier when there is one; a default ceiling is
    # reported at the tier's ctx_size line.
    ultra = tier_text("role = ultra\nmodel = a/b\nctx_size = 8192\n", "top")
    assert problems(agent + ultra) == [
        (
            "t.ini:9: [top] ctx_size: 8192 is smaller than high_fidelity_ceiling 12000 "
            "(the default), so auto would send requests here that do not fit"
        )
    ]
    # ctx_size 0 is the model's default: not checked.
    parse_stack(tier_text(GGUF + "role = agent\nctx_size = 0\n"))


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "anthropic_api_key",
        "client_secret",
        "token",
        "password",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_role_arn",
        "aws_role_session_name",
    ],
)
def test_secrets_are_refused(key: str) -> None:
    [line] = problems(tier_text(GGUF + f"{key} = hunter2-s3cr3t\n"))
    assert line.startswith(
        f"t.ini:4: [a] {key}: looks like a secret, and models.ini is meant to be committed; "
    )
    assert "ANTHROPIC_API_KEY" in line and "AWS profile" in line
    assert "hunter2" not in line


def test_litellm_backend_needs_a_model() -> None:
    assert problems(tier_text("backend = litellm\nhf_repo = r\nhf_file = f\n")) == [
        "t.ini:2: [a] backend: backend = litellm needs model = <provider>/<model-id>"
    ]
    assert problems(tier_text("backend = gguf\nmodel = a/b\n")) == [
        "t.ini:2: [a] backend: backend = gguf needs hf_repo and hf_file, or gguf_path"
    ]


def test_unknown_backend() -> None:
    assert problems(tier_text("backend = bedrock\nmodel = a/b\n")) == [
        "t.ini:2: [a] backend: unknown backend 'bedrock' (supported: gguf, litellm)"
    ]


def test_not_a_tier() -> None:
    assert problems(tier_text("hf_repo = org/repo\nrole = fast\n")) == [
        "t.ini:1: [a] not a tier: set hf_repo+hf_file or gguf_path (local), model (hosted) "
        "or backends (other machines)"
    ]


@pytest.mark.parametrize(
    "value",
    [
        "yarn",
        "yarn(scale=4)",
        "linear(scale=4, orig_ctx=32768)",
        "yarn(scale=0, orig_ctx=32768)",
        "yarn(scale=4, orig_ctx=32k)",
    ],
)
def test_bad_rope_scaling(value: str) -> None:
    assert problems(tier_text(GGUF + f"rope_scaling = {value}\n")) == [
        (
            f"t.ini:4: [a] rope_scaling: {value!r}: expected yarn(scale=N, orig_ctx=M), "
            "e.g. yarn(scale=4, orig_ctx=32768)"
        )
    ]


def test_rope_scaling_is_whitespace_and_case_tolerant() -> None:
    tier = parse_stack(
        tier_text(GGUF + "rope_scaling = YaRN ( scale = 2.5 , orig_ctx = 8192 )\n")
    ).tiers[0]
    assert tier.rope_scaling == (2.5, 8192)


def test_duplicate_section_and_key() -> None:
    text = tier_text(GGUF + "ctx_size = 1\nctx_size = 2\n") + tier_text(GGUF)
    assert problems(text) == [
        "t.ini:5: [a] ctx_size: duplicate key (first at line 4)",
        "t.ini:6: [a] duplicate section (first at line 1)",
        "t.ini:7: [a] hf_repo: duplicate key (first at line 2)",
        "t.ini:8: [a] hf_file: duplicate key (first at line 3)",
    ]


def test_malformed_lines() -> None:
    assert problems("ctx_size = 1\n[a]\njust words\n= 3\n" + GGUF) == [
        "t.ini:1: 'ctx_size = 1' comes before any [section] header",
        "t.ini:3: [a] 'just words': expected key = value",
        "t.ini:4: [a] '= 3': expected key = value",
    ]


def test_the_templates_commented_defaults_are_the_schemas() -> None:
    """The template shows defaults as commented-out lines; the schema owns them: uncommenting
    any of those lines must change nothing."""
    import re

    from llmstack.config.keys import DEFAULT_KEYS, ROUTING_KEYS

    section, shown = "", []
    for line in bundled_template_text().splitlines():
        header = re.fullmatch(r"\[(\w+)\].*", line)
        section = header.group(1) if header else section
        default = re.fullmatch(r";\s*(\w+)\s*=\s*(\S+).*", line)
        keys = {"DEFAULT": DEFAULT_KEYS, "ROUTING": ROUTING_KEYS}.get(section, {})
        if default and default.group(1) in keys and default.group(1) != "llama_server_bin":
            shown.append((section, default.group(1), default.group(2)))
    assert {key for _, key, _ in shown} >= {"high_fidelity_ceiling", "mid_fidelity_ceiling",
                                            "multi_turn", "sticky_sessions", "max_queue_wait",
                                            "response_timeout", "idle_timeout"}
    for section, key, value in shown:
        assert parse_stack(f"[{section}]\n{key} = {value}\n", "") == Stack(), (key, value)
