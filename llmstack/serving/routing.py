"""Auto routing: choose the tier for a request whose model is "auto".

Pure and allocation-light: no I/O, no logging, no whole-body ``json.dumps``.

The ladder has three rungs, found by role in models.ini, from low to high:
fast < agent < ultra. :func:`classify` applies the original step-down rules
(first match wins) and keeps their reason strings:

1. an ultra trigger in the last user message or a string system prompt
   -> ultra (``ultra-trigger``), or agent when there is no ultra tier;
2. estimate <= high_fidelity_ceiling -> ultra, or agent when there is none;
3. estimate <= mid_fidelity_ceiling -> agent;
4. at least multi_turn user turns -> agent;
5. otherwise -> fast.

Then, in this order:

* a missing rung is replaced by the nearest rung below it, else the nearest
  above it; the reason gets `` (no <role> tier)``: a reason names only tiers the
  stack has. A rung tier the stack has but cannot serve now (its file not
  downloaded, say) is missing too, and the reason says why (``(<tier> not
  downloaded)``): :meth:`RoutingTable.without`;
* context fit: a tier whose ctx_size (when > 0; 0 means "model default" and
  always fits) is below estimate + an output reserve
  (:func:`llmstack.serving.output_cap.output_reserve`: what the request asks for, never
  more than a small fixed reserve or the tier's cap) is skipped upwards
  (fast -> agent -> ultra), then downwards if nothing above fits; the reason
  gets `` -> <tier> (<skipped> ctx N < need)``. If no rung fits,
  :class:`ContextTooLarge` is raised;
* session floor: a decision below the session's previous tier is raised to
  it (reason `` (session floor <tier>)``), unless that tier cannot hold the
  request.

The estimate is characters // 4 over: ``prompt`` (a string or a list of
strings), message contents (strings, and ``text`` parts of part lists),
assistant ``tool_calls`` / ``function_call`` names and arguments, and the
compact JSON of ``tools`` / ``functions``; plus a flat IMAGE_TOKENS per image
part. Anthropic Messages add ``system`` (a string or text blocks) and
``tool_use`` (name and input JSON) / ``tool_result`` blocks; the Responses API
adds ``instructions`` and ``input`` (a string, or items: messages with
``input_text`` / ``output_text`` / ``input_image`` parts, ``function_call`` and
``function_call_output``). A user message made only of tool results is no user
turn. The answer itself is clamped to what the window leaves
(:mod:`llmstack.serving.output_cap`), so what a request asks for never makes it too long.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from ..config.schema import Stack
from .lru import Lru
from .output_cap import BadOutputField, asked_output, output_reserve

if TYPE_CHECKING:
    from .routing_memo import BodyMemo

LADDER: tuple[str, ...] = ("fast", "agent", "ultra")
"""Rung roles from low to high."""
IMAGE_TOKENS = 768
"""Flat token estimate per image part (roughly one 768x768 image tile set)."""
_IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_FAST, _AGENT, _ULTRA = range(3)

ULTRA_TRIGGER = re.compile(
    r"\[(?:ultra|opus)\]|^[ \t]*(?:ultra|opus)\s*:", re.IGNORECASE | re.MULTILINE
)
# Request bodies come from json.loads, so they cannot be cyclic; skipping the check saves ~10 %.
_encode_json = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, check_circular=False, default=str
).encode


class ContextTooLarge(ValueError):
    """No rung tier can hold the request (HTTP 400 ``context_length_exceeded``)."""

    def __init__(self, estimated_tokens: int, largest_ctx: int, reserve: int = 0) -> None:
        self.estimated_tokens = estimated_tokens
        self.largest_ctx = largest_ctx
        self.reserve = reserve
        output = f" plus {reserve} tokens kept for the answer" if reserve else ""
        # Worded for clients' context-window classifiers: litellm's
        # ExceptionCheckers.is_error_str_context_window_exceeded
        # (litellm/litellm_core_utils/exception_mapping_utils.py) matches "this model's maximum
        # context length is" (OpenAI's own wording) and "prompt is too long" (Anthropic's, which
        # Claude Code matches too); the openai SDK exposes the code context_length_exceeded.
        super().__init__(
            f"This model's maximum context length is {largest_ctx} tokens (the largest "
            f"context window of any tier), but this request needs about {estimated_tokens} "
            f"input tokens{output}: prompt is too long"
        )


class NoRoutableTier(LookupError):
    """The stack has no fast, agent or ultra tier, so "auto" cannot route."""


@dataclass(frozen=True)
class Decision:
    """Where an auto request goes and why."""

    tier: str
    reason: str
    estimated_tokens: int


@dataclass(frozen=True)
class Rung:
    """A tier on the ladder."""

    name: str
    ctx_size: int = 0
    max_output: int = 0
    """The tier's ``max_output_tokens`` (0: unset)."""

    def need(self, prompt_tokens: int, asked: int | None) -> int:
        """Tokens a request needs in this window: its prompt plus the output reserve."""
        return prompt_tokens + output_reserve(asked, self.max_output)

    def holds(self, prompt_tokens: int, asked: int | None) -> bool:
        """Whether the context window holds the prompt and the output reserve (0 = unknown
        window, assume yes)."""
        return self.ctx_size == 0 or self.need(prompt_tokens, asked) <= self.ctx_size


@dataclass(frozen=True)
class RoutingTable:
    """Rung tiers and thresholds, built once per Stack."""

    fast: Rung | None = None
    agent: Rung | None = None
    ultra: Rung | None = None
    high_fidelity_ceiling: int = Stack.high_fidelity_ceiling
    mid_fidelity_ceiling: int = Stack.mid_fidelity_ceiling
    multi_turn: int = Stack.multi_turn
    sticky_sessions: bool = Stack.sticky_sessions
    unavailable: tuple[tuple[str, str], ...] = ()
    """(role, why) of the rungs taken out by :meth:`without`."""

    @classmethod
    def from_stack(cls, stack: Stack) -> RoutingTable:
        """The first tier of each rung role, and the [ROUTING] settings."""
        tiers = (stack.first_with_role(role) for role in LADDER)
        fast, agent, ultra = (Rung(t.name, t.ctx_size, t.max_output_tokens) if t else None
                              for t in tiers)
        return cls(
            fast, agent, ultra,
            high_fidelity_ceiling=stack.high_fidelity_ceiling,
            mid_fidelity_ceiling=stack.mid_fidelity_ceiling,
            multi_turn=stack.multi_turn,
            sticky_sessions=stack.sticky_sessions,
        )

    def without(self, unavailable: Mapping[str, str]) -> RoutingTable:
        """This table with the rungs of ``unavailable`` (role -> why, e.g. ``code-smart not
        downloaded``) taken out: ``auto`` routes as if the stack had no such tier and its
        reasons say why. Unchanged when no rung would be left: each request then gets its
        tier's own error, which names the fix."""
        fast, agent, ultra = (None if role in unavailable else rung
                              for role, rung in zip(LADDER, self.rungs, strict=True))
        if not (fast or agent or ultra):
            return self
        return replace(self, fast=fast, agent=agent, ultra=ultra,
                       unavailable=(*self.unavailable, *unavailable.items()))

    @cached_property
    def rungs(self) -> tuple[Rung | None, Rung | None, Rung | None]:
        """(fast, agent, ultra), None where the stack has no such tier."""
        return self.fast, self.agent, self.ultra

    def rung_name(self, index: int) -> str:
        """The tier name of a present rung."""
        rung = self.rungs[index]
        assert rung is not None, LADDER[index]
        return rung.name

    def describe(self) -> str:
        """The ladder in words (``auto``'s description), naming only tiers the stack has."""
        if not any(self.rungs):
            return "no tier has role fast, agent or ultra: ask for a model by name"

        def to(index: int) -> str:
            return self.rung_name(_nearest_present(self, index))

        high = f"{to(_ULTRA)} or {to(_AGENT)}" if self.ultra else to(_AGENT)
        return (f"<= {self.high_fidelity_ceiling} tokens -> {high}; <= "
                f"{self.mid_fidelity_ceiling} -> {to(_AGENT)}; >= {self.multi_turn} user turns "
                f"-> {to(_AGENT)}; else {to(_FAST)}. [ultra] or [opus] forces the ultra tier.")


class SessionFloors(Lru[str, str]):
    """Bounded LRU of session id -> the tier last chosen for it."""

    def __init__(self, max_entries: int = 1024) -> None:
        super().__init__(max_entries)

    def floor(self, session_id: str) -> str | None:
        """The session's tier, or None for an unknown session."""
        return self.get(session_id)

    def record(self, session_id: str, tier: str) -> None:
        """Remember the tier chosen for the session, evicting the oldest session if full."""
        self.put(session_id, tier)


# --------------------------------------------------------------------------- measuring


def _parts_size(parts: list[Any]) -> tuple[int, int, list[str]]:
    """(chars, images, texts) of a content-part list; ``texts`` are the text parts only."""
    chars, images, texts = 0, 0, []
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            text = part.get("text")
            if isinstance(text, str):
                chars += len(text)
                texts.append(text)
        elif kind in _IMAGE_PARTS:
            images += 1
        elif kind == "tool_use":
            chars += _call_chars(part) + len(_encode_json(part.get("input")))
        elif kind == "tool_result":
            chars, images = _add_output(part.get("content"), chars, images)
    return chars, images, texts


def _add_output(output: Any, chars: int, images: int) -> tuple[int, int]:
    """A tool result (a string or nested parts) added to (chars, images)."""
    if isinstance(output, str):
        return chars + len(output), images
    if isinstance(output, list):
        more_chars, more_images, _ = _parts_size(output)
        return chars + more_chars, images + more_images
    return chars, images


def _call_chars(function: Any) -> int:
    if not isinstance(function, dict):
        return 0
    return sum(
        len(v) for v in (function.get("name"), function.get("arguments")) if isinstance(v, str)
    )


class _Measure(NamedTuple):
    """What one pass over the request body finds."""

    tokens: int
    tool_tokens: int
    """The part of ``tokens`` that is tool schemas (``tools`` / ``functions``)."""
    user_turns: int
    triggered: bool


def _measure(body: Mapping[str, Any], memo: BodyMemo | None = None,
             triggers: bool = True) -> _Measure:
    """Estimate input tokens, count user turns and (with ``triggers``) look for an ultra
    trigger.

    ``memo`` remembers the parts an agent repeats every turn (:mod:`llmstack.serving.routing_memo`).
    """
    chars = images = user_turns = 0
    trigger_texts: list[str] = []
    last_user: list[str] = []
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        chars += sum(len(p) for p in prompt if isinstance(p, str))
    for system in (body.get("system"), body.get("instructions")):  # Anthropic, Responses
        if isinstance(system, str):
            chars += len(system)
            trigger_texts.append(system)
        elif isinstance(system, list):
            part_chars, _, system_texts = _parts_size(system)
            chars += part_chars
            trigger_texts += system_texts
    messages = body.get("messages")
    items = body.get("input")  # Responses: a string or a list of items
    if isinstance(items, str):
        chars += len(items)
        user_turns, last_user = 1, [items]
    elif isinstance(items, list):
        messages = items
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        role, content = message.get("role"), message.get("content")
        texts: list[str] = []
        part_images = 0
        if isinstance(content, str):
            chars += len(content)
            texts = [content]
            if role == "system":
                trigger_texts.append(content)
        elif isinstance(content, list):
            part_chars, part_images, texts = _parts_size(content)
            chars += part_chars
            images += part_images
        if role == "user" and (texts or part_images or not isinstance(content, list)):
            user_turns += 1
            last_user = texts
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            chars += sum(_call_chars(c.get("function")) for c in calls if isinstance(c, dict))
        chars += _call_chars(message.get("function_call"))
        if role is None:  # Responses items: function_call, function_call_output
            chars += _call_chars(message)
            chars, images = _add_output(message.get("output"), chars, images)
    tool_chars = 0
    for key in ("tools", "functions"):
        schemas = body.get(key)
        if schemas:
            tool_chars += memo.json_chars(key, schemas, _json_chars) if memo else _json_chars(schemas)
    tokens = (chars + tool_chars) // 4 + images * IMAGE_TOKENS
    if not triggers:
        return _Measure(tokens, tool_chars // 4, user_turns, False)
    trigger_texts += last_user
    scan = _has_trigger if memo is None else lambda text: memo.has_trigger(text, _has_trigger)
    return _Measure(tokens, tool_chars // 4, user_turns, any(map(scan, trigger_texts)))


def _json_chars(value: Any) -> int:
    return len(_encode_json(value))


def estimate_tokens(body: Mapping[str, Any], memo: BodyMemo | None = None) -> int:
    """The input-token estimate :func:`classify` routes by (chars // 4 plus images); no
    trigger scan (a named request is not routed)."""
    return _measure(body, memo, triggers=False).tokens


def _has_trigger(text: str) -> bool:
    # The substring test is much cheaper than the regex on a 20 KB system prompt.
    lowered = text.lower()
    return ("ultra" in lowered or "opus" in lowered) and ULTRA_TRIGGER.search(text) is not None


def requested_output(body: Mapping[str, Any]) -> int | None:
    """What the body's output fields ask for (:func:`~llmstack.serving.output_cap.asked_output`);
    a malformed one counts as absent here (the clamp refuses it)."""
    try:
        return asked_output(body)
    except BadOutputField:
        return None


# --------------------------------------------------------------------------- deciding


def _ladder(table: RoutingTable, m: _Measure) -> tuple[int, str]:
    """The original step-down rules: (rung index, reason)."""
    unavailable = "" if table.ultra else _missing(table, _ULTRA)
    top = _ULTRA if table.ultra else _AGENT
    high, mid, est = table.high_fidelity_ceiling, table.mid_fidelity_ceiling, m.tokens
    if m.triggered:
        return top, "ultra-trigger" if table.ultra else "ultra-trigger->agent" + unavailable
    if est <= high:
        return top, f"high-fidelity tokens~{est}<={high}{unavailable}"
    if est <= mid:
        return _AGENT, f"mid-fidelity tokens~{est}<={mid}"
    if m.user_turns >= table.multi_turn:
        turns = f"user-turns={m.user_turns}>={table.multi_turn}"
        return _AGENT, f"long-context tokens~{est}>{mid} ({turns} floor)"
    return _FAST, f"long-context tokens~{est}>{mid}"


def _search_order(index: int, upwards_first: bool) -> list[int]:
    below, above = list(range(index - 1, -1, -1)), list(range(index + 1, len(LADDER)))
    return [index, *above, *below] if upwards_first else [index, *below, *above]


def _missing(table: RoutingTable, index: int) -> str:
    """The reason's note for a missing rung: why its tier is unavailable, else that the stack
    has no tier for the role (it never names a tier the stack does not have)."""
    role = LADDER[index]
    return f" ({dict(table.unavailable).get(role) or f'no {role} tier'})"


def _nearest_present(table: RoutingTable, index: int) -> int:
    """The rung itself when present, else the nearest present one, below first."""
    for candidate in _search_order(index, upwards_first=False):
        if table.rungs[candidate]:
            return candidate
    raise NoRoutableTier("no tier has role fast, agent or ultra; ask for a model by name")


def _present(table: RoutingTable, index: int, reason: str) -> tuple[int, str]:
    """Replace a missing rung by the nearest present one, below first."""
    candidate = _nearest_present(table, index)
    return candidate, reason + ("" if candidate == index else _missing(table, index))


def _fit(table: RoutingTable, index: int, est: int, asked: int | None,
         tools: int = 0) -> tuple[int, str]:
    """The first present rung, upwards then downwards, whose context holds the request;
    else the widest when it holds the request without its ``tools`` tokens (the tier's
    chat template may drop them: its own count decides)."""
    skipped: list[str] = []
    for candidate in _search_order(index, upwards_first=True):
        rung = table.rungs[candidate]
        if rung is None:
            continue
        if rung.holds(est, asked):
            return candidate, f" -> {rung.name} ({', '.join(skipped)})" if skipped else ""
        skipped.append(f"{rung.name} ctx {rung.ctx_size} < {rung.need(est, asked)}")
    widest, largest = max(((i, r) for i, r in enumerate(table.rungs) if r is not None),
                          key=lambda pair: pair[1].ctx_size)
    if tools and largest.holds(est - tools, asked):
        return widest, (f" -> {largest.name} ({', '.join(skipped)}; {tools} of them tool "
                        f"schemas, which {largest.name} counts)")
    raise ContextTooLarge(est, largest.ctx_size, output_reserve(asked, largest.max_output))


def classify(
    body: Mapping[str, Any], table: RoutingTable, session_floor: str | None = None,
    memo: BodyMemo | None = None,
) -> Decision:
    """Pick the tier for an auto-routed chat or completion request body.

    ``session_floor`` is the tier this agent session was last routed to (see
    SessionFloors). Messages and content parts are read only when they are
    dicts, as json.loads makes them. Raises ContextTooLarge when no rung tier
    can hold the request, and NoRoutableTier when the stack has no rung tiers.
    ``memo`` (the request's raw bytes bound) saves repeated work across turns.
    """
    m = _measure(body, memo)
    index, reason = _present(table, *_ladder(table, m))
    asked = requested_output(body)
    index, suffix = _fit(table, index, m.tokens, asked, m.tool_tokens)
    reason += suffix
    for above in range(index + 1, len(LADDER)):
        rung = table.rungs[above]
        if rung and rung.name == session_floor and rung.holds(m.tokens, asked):
            index, reason = above, f"{reason} (session floor {session_floor})"
    return Decision(table.rung_name(index), reason, m.tokens)


def step_up(table: RoutingTable, tier: str) -> str | None:
    """The next rung up the ladder with a larger context window than ``tier``'s, if any.

    Used when the chosen tier's server refuses an auto-routed request as too long
    for its window: the chars/4 estimate undercounts some texts (code, CJK).
    """
    index = next((i for i, rung in enumerate(table.rungs) if rung and rung.name == tier), None)
    if index is None:
        return None
    current = table.rungs[index]
    assert current is not None
    for rung in table.rungs[index + 1:]:
        if rung is not None and (rung.ctx_size == 0 or rung.ctx_size > current.ctx_size > 0):
            return rung.name
    return None
