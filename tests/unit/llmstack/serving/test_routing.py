"""The auto router's classification (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmstack.config.ini import bundled_template_text, parse_stack
from llmstack.serving.output_cap import OUTPUT_RESERVE
from llmstack.serving.routing import (
    IMAGE_TOKENS,
    ContextTooLarge,
    Decision,
    NoRoutableTier,
    RoutingTable,
    Rung,
    SessionFloors,
    classify,
)

BIG = 1_000_000
FULL = RoutingTable(
    fast=Rung("code-fast", BIG), agent=Rung("code-smart", BIG), ultra=Rung("code-ultra", BIG)
)
NO_ULTRA = RoutingTable(fast=Rung("code-fast", BIG), agent=Rung("code-smart", BIG))


def text(tokens: int) -> str:
    """A string the estimator counts as exactly this many tokens."""
    return "x" * (4 * tokens)


def chat(*messages: tuple[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": r, "content": c} for r, c in messages], **extra}


def user_turns(n: int, tokens: int) -> dict[str, Any]:
    """n user turns answered by the assistant, totalling `tokens`."""
    body = chat(*[m for _ in range(n) for m in (("user", ""), ("assistant", ""))])
    body["messages"][0]["content"] = text(tokens)
    return body


# --------------------------------------------------------------------------- table and ladder


def test_table_from_bundled_stack() -> None:
    table = RoutingTable.from_stack(parse_stack(bundled_template_text()))
    assert table.rungs == (
        Rung("code-fast", 131072, 8192),
        Rung("code-smart", 131072, 32768),
        Rung("code-ultra", 200000, 8192),
    )
    assert (table.high_fidelity_ceiling, table.mid_fidelity_ceiling, table.multi_turn) == (
        12000,
        32000,
        10,
    )
    assert table.sticky_sessions is True


def test_table_uses_the_first_tier_of_each_role_and_never_plan_tiers() -> None:
    stack = parse_stack("""
[ROUTING]
sticky_sessions = off
[p]
role = plan
model = a/p
[one]
role = agent
model = a/one
aliases = one-alias
[two]
role = agent
model = a/two
aliases = two-alias
""")
    table = RoutingTable.from_stack(stack)
    assert table.rungs == (None, Rung("one"), None)
    assert table.sticky_sessions is False
    assert classify(chat(("user", "[ultra] plan this")), table).tier == "one"


@pytest.mark.parametrize(
    "table, body, tier, reason",
    [
        (FULL, chat(("user", "[ultra] refactor")), "code-ultra", "ultra-trigger"),
        (
            NO_ULTRA,
            chat(("user", "[ultra] refactor")),
            "code-smart",
            "ultra-trigger->agent (no ultra tier)",
        ),
        (FULL, chat(("user", text(100))), "code-ultra", "high-fidelity tokens~100<=12000"),
        (FULL, chat(("user", text(12000))), "code-ultra", "high-fidelity tokens~12000<=12000"),
        (
            NO_ULTRA,
            chat(("user", text(100))),
            "code-smart",
            "high-fidelity tokens~100<=12000 (no ultra tier)",
        ),
        (FULL, chat(("user", text(12001))), "code-smart", "mid-fidelity tokens~12001<=32000"),
        (FULL, chat(("user", text(32000))), "code-smart", "mid-fidelity tokens~32000<=32000"),
        (
            FULL,
            user_turns(10, 32001),
            "code-smart",
            "long-context tokens~32001>32000 (user-turns=10>=10 floor)",
        ),
        (FULL, user_turns(9, 32001), "code-fast", "long-context tokens~32001>32000"),
    ],
)
def test_ladder(table: RoutingTable, body: dict, tier: str, reason: str) -> None:
    decision = classify(body, table)
    assert (decision.tier, decision.reason) == (tier, reason)


def test_thresholds_come_from_the_table() -> None:
    table = RoutingTable(
        fast=Rung("f"),
        agent=Rung("a"),
        ultra=Rung("u"),
        high_fidelity_ceiling=10,
        mid_fidelity_ceiling=20,
        multi_turn=2,
    )
    assert classify(chat(("user", text(10))), table).tier == "u"
    assert classify(chat(("user", text(20))), table).reason == "mid-fidelity tokens~20<=20"
    assert (
        classify(user_turns(2, 21), table).reason
        == "long-context tokens~21>20 (user-turns=2>=2 floor)"
    )
    assert classify(user_turns(1, 21), table).tier == "f"


@pytest.mark.parametrize(
    "table, body, tier, reason",
    [
        (
            RoutingTable(fast=Rung("f")),
            chat(("user", text(20000))),
            "f",
            "mid-fidelity tokens~20000<=32000 (no agent tier)",
        ),
        (
            RoutingTable(fast=Rung("f")),
            chat(("user", "hi")),
            "f",
            "high-fidelity tokens~0<=12000 (no ultra tier) (no agent tier)",
        ),
        (
            RoutingTable(ultra=Rung("u")),
            user_turns(1, 40000),
            "u",
            "long-context tokens~40000>32000 (no fast tier)",
        ),
        (
            RoutingTable(fast=Rung("f"), ultra=Rung("u")),
            chat(("user", text(20000))),
            "f",
            "mid-fidelity tokens~20000<=32000 (no agent tier)",
        ),
        (
            RoutingTable(agent=Rung("a")),
            user_turns(1, 40000),
            "a",
            "long-context tokens~40000>32000 (no fast tier)",
        ),
    ],
)
def test_missing_rungs_fall_back_to_the_nearest_below_then_above(table, body, tier, reason) -> None:
    decision = classify(body, table)
    assert (decision.tier, decision.reason) == (tier, reason)


OWN_NAMES = {"fast": "my-small", "agent": "my-coder", "ultra": "my-big"}


@settings(max_examples=300, deadline=None)
@given(present=st.sets(st.sampled_from(["fast", "agent", "ultra"]), min_size=1),
       words=st.integers(0, 50000), turns=st.integers(1, 12), trigger=st.booleans())
def test_reasons_name_only_tiers_the_stack_has(present: set[str], words: int, turns: int,
                                               trigger: bool) -> None:
    """A stack without some rung (a real models.ini with no ultra tier, say) must never read a
    reason naming a tier it does not have, such as the template's code-ultra."""
    table = RoutingTable(**{role: Rung(OWN_NAMES[role]) for role in present})
    body = user_turns(turns, words)
    if trigger:
        last_user = [m for m in body["messages"] if m["role"] == "user"][-1]
        last_user["content"] += " [ultra]"
    reason = classify(body, table).reason
    named = {word for word in reason.replace("(", " ").replace(")", " ").split()
             if word.startswith(("my-", "code-"))}
    assert named <= {OWN_NAMES[role] for role in present}, reason
    assert "code-" not in table.describe()


def test_auto_description_names_the_tiers_the_stack_has() -> None:
    full = RoutingTable(fast=Rung("f"), agent=Rung("a"), ultra=Rung("u"))
    assert full.describe() == ("<= 12000 tokens -> u or a; <= 32000 -> a; >= 10 user turns -> a; "
                               "else f. [ultra] or [opus] forces the ultra tier.")
    assert RoutingTable(fast=Rung("f"), agent=Rung("a")).describe().startswith(
        "<= 12000 tokens -> a; <= 32000 -> a;")
    assert RoutingTable(agent=Rung("a")).describe().endswith("else a. [ultra] or [opus] forces "
                                                              "the ultra tier.")


def test_no_rung_tiers_at_all() -> None:
    with pytest.raises(NoRoutableTier):
        classify(chat(("user", "hi")), RoutingTable())


# --------------------------------------------------------------------------- ultra trigger


@pytest.mark.parametrize(
    "content",
    [
        "[ultra] fix it",
        "please [OPUS] fix it",
        "fix it [Ultra]",
        "ultra: fix it",
        "Opus : fix it",
        "  ultra:fix",
        "\tOPUS:\tfix",
        "first line\n   ultra: second line",
        "ultra\n: split by a newline",
    ],
)
def test_trigger_variants(content: str) -> None:
    assert classify(chat(("user", text(20000) + "\n" + content)), FULL).reason == "ultra-trigger"


@pytest.mark.parametrize(
    "content",
    [
        "the ultra: not at a line start",
        "ultrasound: no",
        "[ultra no bracket",
        "opus magnum",
        "x ultra:",
        "[ ultra ]",
        "ultra-fast: no",
    ],
)
def test_not_triggers(content: str) -> None:
    assert classify(chat(("user", text(20000) + "\n" + content)), FULL).reason.startswith(
        "mid-fidelity"
    )


@pytest.mark.parametrize(
    "messages, triggered",
    [
        ([("system", "ultra: always"), ("user", "hi")], True),
        (
            [
                ("system", [{"type": "text", "text": "ultra: list content is ignored"}]),
                ("user", "hi"),
            ],
            False,
        ),
        ([("user", "[ultra] earlier turn"), ("assistant", "ok"), ("user", "hi")], False),
        ([("user", "hi"), ("assistant", "[ultra]")], False),
        ([("user", "hi"), ("tool", "[opus]")], False),
        ([("user", [{"type": "text", "text": "look"}, {"type": "text", "text": "[opus]"}])], True),
    ],
)
def test_trigger_places(messages: list, triggered: bool) -> None:
    body = chat(*messages)
    body["messages"].insert(0, {"role": "system", "content": text(20000)})
    assert (classify(body, FULL).reason == "ultra-trigger") is triggered


# --------------------------------------------------------------------------- estimate and turns


def test_user_turns_ignore_tool_assistant_and_system_messages() -> None:
    body = user_turns(9, 40000)
    body["messages"] += [
        {"role": r, "content": ""} for r in ("system", "tool", "assistant", "developer") * 5
    ]
    assert classify(body, FULL).tier == "code-fast"
    body["messages"].append({"role": "user", "content": ""})
    assert classify(body, FULL).reason.endswith("(user-turns=10>=10 floor)")


def test_estimate_counts_everything_the_model_reads() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "bash",
                "description": "Run a command ✓",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "bash", "arguments": '{"command":"ls"}'},
    }
    body = {
        "messages": [
            {"role": "system", "content": "s" * 40},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "t" * 20},
                    {"type": "image_url", "image_url": {"url": "data:" + "A" * 9999}},
                    {"type": "input_audio", "input_audio": {"data": "B" * 999}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "r" * 30},
            {
                "role": "assistant",
                "content": "",
                "function_call": {"name": "grep", "arguments": "{}"},
            },
        ],
        "tools": tools,
        "prompt": "p" * 10,
    }
    chars = 40 + 20 + len("bash") + len('{"command":"ls"}') + 30 + len("grep{}") + 10
    chars += len(json.dumps(tools, separators=(",", ":"), ensure_ascii=False))
    assert classify(body, FULL).estimated_tokens == chars // 4 + IMAGE_TOKENS


def test_completions_prompt_and_malformed_bodies() -> None:
    assert classify({"prompt": text(50)}, FULL).estimated_tokens == 50
    assert classify({"prompt": [text(5), text(6), 7]}, FULL).estimated_tokens == 11
    junk = {
        "messages": ["not a dict", {"role": "user"}, {"content": 3}, {"tool_calls": "x"}],
        "tools": [],
    }
    assert classify(junk, FULL) == Decision("code-ultra", "high-fidelity tokens~0<=12000", 0)
    assert classify({"messages": "not a list"}, FULL).estimated_tokens == 0


# --------------------------------------------------------------------------- context fit


def test_a_tier_too_small_is_skipped_upwards() -> None:
    table = RoutingTable(
        fast=Rung("code-fast", 34100),
        agent=Rung("code-smart", 65536),
        ultra=Rung("code-ultra", BIG),
    )
    body = user_turns(1, 33000)
    assert classify(body, table).tier == "code-fast"  # 33000 + the 1024 reserve fit
    body["max_tokens"] = 32000  # Claude Code's: the answer is clamped, it needs no room
    assert classify(body, table).tier == "code-fast"
    body = user_turns(1, 33100)
    assert classify(body, table) == Decision(
        "code-smart",
        "long-context tokens~33100>32000 -> code-smart (code-fast ctx 34100 < 34124)",
        33100,
    )
    body["max_completion_tokens"] = 900  # asks for less than the reserve: needs less room
    assert classify(body, table).tier == "code-fast"


def test_the_reserve_is_never_more_than_the_tier_allows() -> None:
    table = RoutingTable(fast=Rung("f", 2100, max_output=64), agent=Rung("a", BIG),
                         high_fidelity_ceiling=0, mid_fidelity_ceiling=1)
    assert classify(chat(("user", text(2000))), table).tier == "f"  # 2000 + 64


def test_downwards_only_when_nothing_above_fits() -> None:
    table = RoutingTable(fast=Rung("f", 8192), agent=Rung("a", 0), ultra=Rung("u", 4096))
    decision = classify(chat(("user", text(3100)), max_tokens=2000), table)
    assert (decision.tier, decision.reason) == (
        "a",
        "high-fidelity tokens~3100<=12000 -> a (u ctx 4096 < 4124)",
    )


def test_tool_schemas_beyond_every_window_are_left_for_the_widest_tier_to_count() -> None:
    """Claude Code's default request on the demo: 12 tool schemas make the estimate exceed
    every window, though SmolLM2's template drops them and the prompt fits. Without its
    tools the request fits the widest rung, so it goes there and the tier's own count
    decides (its refusal comes back as context_length_exceeded after the step-ups); a
    request too long without its tools is still refused before any tier starts."""
    table = RoutingTable(fast=Rung("f", 8192), agent=Rung("a", 4096))
    tools = [{"name": "t", "description": text(3000)}]  # about 3000 tokens of schema
    decision = classify(chat(("user", text(6000)), tools=tools), table)
    need = decision.estimated_tokens + 1024
    assert (decision.tier, decision.reason) == ("f", (
        f"high-fidelity tokens~{decision.estimated_tokens}<=12000 (no ultra tier) -> f (a ctx "
        f"4096 < {need}, f ctx 8192 < {need}; 3007 of them tool schemas, which f counts)"))
    with pytest.raises(ContextTooLarge):
        classify(chat(("user", text(7500)), tools=tools), table)


def test_context_too_large() -> None:
    table = RoutingTable(fast=Rung("f", 8192), agent=Rung("a", 16384))
    with pytest.raises(ContextTooLarge) as info:
        classify(chat(("user", text(16000)), max_tokens=1000), table)
    assert (info.value.estimated_tokens, info.value.largest_ctx, info.value.reserve) == (
        16000,
        16384,
        1000,
    )
    assert str(info.value) == (
        "This model's maximum context length is 16384 tokens (the largest context window of "
        "any tier), but this request needs about 16000 input tokens plus 1000 tokens kept for "
        "the answer: prompt is too long"
    )
    assert isinstance(info.value, ValueError)


def test_a_large_output_request_is_not_too_long() -> None:
    """Claude Code asks for max_tokens 32000 on every request: a prompt that fits the
    largest window with the reserve is routed (the answer is clamped), not refused."""
    table = RoutingTable(fast=Rung("f", 8192), agent=Rung("a", 32768))
    decision = classify(chat(("user", text(19000)), max_tokens=32000), table)
    assert decision.tier == "a"


def test_bad_max_tokens_count_as_absent() -> None:
    table = RoutingTable(agent=Rung("a", 1100))
    for value in (True, -5, "4096", 1.5e9, None):
        assert classify(chat(("user", "hi"), max_tokens=value), table).tier == "a"


# --------------------------------------------------------------------------- session floor


@pytest.mark.parametrize(
    "floor, tier, suffix",
    [
        ("code-smart", "code-smart", " (session floor code-smart)"),
        ("code-ultra", "code-ultra", " (session floor code-ultra)"),
        ("code-fast", "code-fast", ""),
        ("plan", "code-fast", ""),
        (None, "code-fast", ""),
    ],
)
def test_session_floor_never_steps_down(floor: str | None, tier: str, suffix: str) -> None:
    decision = classify(user_turns(1, 40000), FULL, session_floor=floor)
    assert (decision.tier, decision.reason) == (tier, "long-context tokens~40000>32000" + suffix)


def test_session_floor_does_not_override_a_higher_decision_or_a_context_overflow() -> None:
    assert classify(chat(("user", "hi")), FULL, session_floor="code-fast").tier == "code-ultra"
    table = RoutingTable(fast=Rung("code-fast", 131072), agent=Rung("code-smart", 32768))
    assert classify(user_turns(1, 40000), table, session_floor="code-smart").tier == "code-fast"


def test_session_floors_are_a_bounded_lru() -> None:
    floors = SessionFloors(max_entries=2)
    assert floors.floor("a") is None
    floors.record("a", "code-fast")
    floors.record("b", "code-smart")
    floors.record("a", "code-ultra")
    assert floors.floor("a") == "code-ultra"
    floors.record("c", "code-fast")  # evicts b, the least recently used
    assert (floors.floor("b"), floors.floor("a"), floors.floor("c"), len(floors)) == (
        None,
        "code-ultra",
        "code-fast",
        2,
    )
    assert SessionFloors().max_entries == 1024


# --------------------------------------------------------------------------- property


def _rung(name: str) -> st.SearchStrategy[Rung | None]:
    ctx = st.one_of(st.just(0), st.integers(1, 60000))
    return st.one_of(st.none(), st.builds(Rung, st.just(name), ctx))


_tables = st.builds(
    lambda fast, agent, ultra, high, gap, turns: RoutingTable(
        fast, agent, ultra, high, high + gap, turns
    ),
    _rung("f"),
    _rung("a"),
    _rung("u"),
    st.integers(0, 8000),
    st.integers(1, 8000),
    st.integers(0, 5),
).filter(lambda t: any(t.rungs))
_messages = st.lists(
    st.tuples(
        st.sampled_from(["system", "user", "assistant", "tool"]),
        st.integers(0, 30000),
        st.sampled_from(["", "\nultra: go", "[opus]"]),
    ),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(
    _tables,
    _messages,
    st.one_of(st.none(), st.integers(0, 20000)),
    st.sampled_from([None, "f", "a", "u"]),
)
def test_never_routes_to_a_tier_that_cannot_hold_the_request(
    table, messages, max_tokens, floor
) -> None:
    body = chat(
        *[(role, "y" * size + tail) for role, size, tail in messages], max_tokens=max_tokens
    )
    try:
        decision = classify(body, table, session_floor=floor)
    except ContextTooLarge as exc:
        assert all(
            0 < r.ctx_size < r.need(exc.estimated_tokens, max_tokens) for r in table.rungs if r
        )
        return
    [chosen] = [r for r in table.rungs if r and r.name == decision.tier]
    needed = chosen.need(decision.estimated_tokens, max_tokens)
    assert chosen.ctx_size == 0 or chosen.ctx_size >= needed
    assert needed <= decision.estimated_tokens + min(max_tokens or OUTPUT_RESERVE, OUTPUT_RESERVE)


def test_step_up_goes_to_the_next_rung_with_a_larger_window() -> None:
    from llmstack.serving.routing import RoutingTable, Rung, step_up

    table = RoutingTable(fast=Rung("f", 8192), agent=Rung("a", 65536), ultra=Rung("u", 200000))
    assert step_up(table, "f") == "a"
    assert step_up(table, "a") == "u"
    assert step_up(table, "u") is None
    assert step_up(table, "plan") is None  # not a rung
    narrow = RoutingTable(fast=Rung("f", 8192), agent=Rung("a", 4096), ultra=None)
    assert step_up(narrow, "f") is None  # a smaller window is no help


# --------------------------------------------------------------------------- unavailable rungs


def test_an_unavailable_rung_is_routed_around_and_the_reason_says_why() -> None:
    """A tier the stack has but cannot serve (its file not downloaded) is not a rung: short
    requests go to the next one down instead of failing there."""
    table = FULL.without({"ultra": "code-ultra needs litellm",
                          "agent": "code-smart not downloaded"})
    decision = classify(chat(("user", "hi")), table)
    assert decision.tier == "code-fast"
    assert decision.reason == ("high-fidelity tokens~0<=12000 (code-ultra needs litellm) "
                               "(code-smart not downloaded)")
    assert "code-smart" not in table.describe()


def test_when_no_rung_could_serve_the_table_is_kept() -> None:
    """Then each request reaches its tier, whose own error names the fix."""
    alone = RoutingTable(agent=Rung("code-smart"))
    assert alone.without({"agent": "code-smart not downloaded"}) == alone
    assert classify(chat(("user", "hi")), alone).tier == "code-smart"


def test_the_demo_calls_a_short_prompt_high_fidelity() -> None:
    """The demo once sent every prompt past one token down the ladder as "long-context"."""
    from llmstack.config.demo import demo_stack

    table = RoutingTable.from_stack(demo_stack())
    decision = classify(chat(("user", "Say hello")), table)
    assert decision.reason.startswith("high-fidelity tokens~2<=")
    assert decision.tier == "agent"
    long = classify(chat(("user", text(3000))), table)
    assert long.reason.startswith("long-context") and long.tier == "fast"


def test_the_readme_says_what_auto_does() -> None:
    """Its first paragraph once said auto picks "the cheapest tier that can handle the
    request"; it runs the step-down ladder: short requests to the strongest tier."""
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    first = readme.split("\n\n")[1]
    assert "cheapest" not in first and "step-down fidelity ladder" in first
    assert "short request\ngoes to the strongest tier (ultra, else agent)" in first
    table = RoutingTable.from_stack(parse_stack(bundled_template_text()))
    assert classify(chat(("user", "hi")), table).tier == "code-ultra"
    assert classify(chat(("user", text(20000))), table).tier == "code-smart"
    assert classify(chat(("user", text(40000))), table).tier == "code-fast"
