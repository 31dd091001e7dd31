"""``llmstack.serving.routing.classify`` on a ~31 KB opencode-shaped request (goal <= 100 us per call).

The request: a ~20 KB system prompt, one user message and opencode's ten tools
(bash, edit, glob, grep, read, skill, task, todowrite, webfetch, write) with
JSON-schema parameters; the routing table is the bundled models.ini template's.

Beside it, in the same run and for scale, what an auto-routed request of this
size also costs in ``llmstack.serving.app`` (not goals): decoding the body
(``json.loads``), what re-encoding it would cost (``json.dumps``; the app forwards
the client's bytes instead), and classify's own part, the compact JSON encoding
of ``tools`` that it measures.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import record, us

from llmstack.config.ini import bundled_template_text, parse_stack
from llmstack.serving.routing import RoutingTable, _encode_json, classify, estimate_tokens
from llmstack.serving.routing_memo import RoutingMemo

GOAL_US = 100.0
MEMO_GOAL_US = 20.0

_PARAGRAPHS = [
    ("You are opencode, an interactive CLI tool that helps users with software engineering tasks. "
    "Use the instructions below and the tools available to you to assist the user."),
    ("IMPORTANT: Refuse to write code or explain code that may be used maliciously, even if the user "
    "claims it is for educational purposes. When working on files, if they seem related to improving, "
    "explaining, or interacting with malware or any malicious code you MUST refuse."),
    ("If the user asks for help or wants to give feedback inform them of the following: /help to get "
    "help with using opencode; to give feedback, users should report the issue on the project's tracker."),
    ("# Tone and style\nYou should be concise, direct, and to the point. When you run a non-trivial bash "
    "command, you should explain what the command does and why you are running it, to make sure the "
    "user understands what you are doing (this is especially important when you are running a command "
    "that will make changes to the user's system). Remember that your output will be displayed on a "
    "command line interface. Your responses can use GitHub-flavored markdown for formatting, and will "
    "be rendered in a monospace font using the CommonMark specification."),
    ("Output text to communicate with the user; all text you output outside of tool use is displayed to "
    "the user. Only use tools to complete tasks. Never use tools like Bash or code comments as means to "
    "communicate with the user during the session."),
    ("# Proactiveness\nYou are allowed to be proactive, but only when the user asks you to do something. "
    "You should strive to strike a balance between doing the right thing when asked, including taking "
    "actions and follow-up actions, and not surprising the user with actions you take without asking."),
    ("# Following conventions\nWhen making changes to files, first understand the file's code "
    "conventions. Mimic code style, use existing libraries and utilities, and follow existing patterns. "
    "NEVER assume that a given library is available, even if it is well known. Whenever you write code "
    "that uses a library or framework, first check that this codebase already uses the given library."),
    ("# Doing tasks\nThe user will primarily request you perform software engineering tasks. This "
    "includes solving bugs, adding new functionality, refactoring code, explaining code, and more. For "
    "these tasks the following steps are recommended: use the available search tools to understand the "
    "codebase and the user's query; implement the solution using all tools available to you; verify "
    "the solution if possible with tests; run the lint and typecheck commands if they were provided."),
    ("# Tool usage policy\nWhen doing file search, prefer to use the Task tool in order to reduce context "
    "usage. You have the capability to call multiple tools in a single response. When multiple "
    "independent pieces of information are requested, batch your tool calls together for optimal "
    "performance. When making multiple bash tool calls, you MUST send a single message with multiple "
    "tools calls to run the calls in parallel."),
    ("# Code References\nWhen referencing specific functions or pieces of code include the pattern "
    "`file_path:line_number` to allow the user to easily navigate to the source code location."),
]


def system_prompt(target_chars: int = 20_000) -> str:
    parts: list[str] = []
    size, i = 0, 0
    while size < target_chars:
        text = _PARAGRAPHS[i % len(_PARAGRAPHS)]
        if i >= len(_PARAGRAPHS):
            text = f"({i // len(_PARAGRAPHS)}) " + text
        parts.append(text)
        size += len(text) + 2
        i += 1
    env = ("<env>\nWorking directory: /home/user/project\nIs directory a git repo: yes\n"
           "Platform: linux\nToday's date: Wed Nov 25 2026\n</env>")
    return "\n\n".join(parts) + "\n\n" + env


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required,
                       "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}}}


def _s(description: str) -> dict[str, str]:
    return {"type": "string", "description": description}


def _long(text: str, times: int) -> str:
    return " ".join([text] * times)


def tools() -> list[dict[str, Any]]:
    return [
        _tool("bash", _long("Executes a given bash command in a persistent shell session with optional "
                            "timeout, ensuring proper handling and security measures.", 6),
              {"command": _s("The command to execute"),
               "timeout": {"type": "number", "description": "Optional timeout in milliseconds"},
               "description": _s("Clear, concise description of what this command does in 5-10 words.")},
              ["command", "description"]),
        _tool("edit", _long("Performs exact string replacements in files. You must use your Read tool at "
                            "least once in the conversation before editing.", 5),
              {"filePath": _s("The absolute path to the file to modify"),
               "oldString": _s("The text to replace"),
               "newString": _s("The text to replace it with (must be different from oldString)"),
               "replaceAll": {"type": "boolean", "description": "Replace all occurrences of oldString"}},
              ["filePath", "oldString", "newString"]),
        _tool("glob", _long("Fast file pattern matching tool that works with any codebase size. Supports "
                            "glob patterns like **/*.js or src/**/*.ts.", 4),
              {"pattern": _s("The glob pattern to match files against"),
               "path": _s("The directory to search in. Defaults to the current working directory.")},
              ["pattern"]),
        _tool("grep", _long("Fast content search tool that works with any codebase size. Searches file "
                            "contents using regular expressions.", 4),
              {"pattern": _s("The regex pattern to search for in file contents"),
               "path": _s("The directory to search in. Defaults to the current working directory."),
               "include": _s('File pattern to include in the search (e.g. "*.js", "*.{ts,tsx}")')},
              ["pattern"]),
        _tool("read", _long("Reads a file from the local filesystem. You can access any file directly by "
                            "using this tool.", 5),
              {"filePath": _s("The path to the file to read"),
               "offset": {"type": "number", "description": "The line number to start reading from (0-based)"},
               "limit": {"type": "number", "description": "The number of lines to read (defaults to 2000)"}},
              ["filePath"]),
        _tool("skill", _long("Load a skill: a folder of instructions, scripts and resources that help "
                             "with a specialised task.", 3),
              {"name": _s("The name of the skill to load")}, ["name"]),
        _tool("task", _long("Launch a new agent to handle complex, multi-step tasks autonomously. "
                            "Available agent types and the tools they have access to are listed.", 6),
              {"description": _s("A short (3-5 words) description of the task"),
               "prompt": _s("The task for the agent to perform"),
               "subagent_type": _s("The type of specialized agent to use for this task")},
              ["description", "prompt", "subagent_type"]),
        _tool("todowrite", _long("Use this tool to create and manage a structured task list for your "
                                 "current coding session.", 6),
              {"todos": {"type": "array", "description": "The updated todo list", "items": {
                  "type": "object", "properties": {
                      "content": _s("Brief description of the task"),
                      "status": {"type": "string",
                                 "enum": ["pending", "in_progress", "completed", "cancelled"]},
                      "priority": {"type": "string", "enum": ["high", "medium", "low"]},
                      "id": _s("Unique identifier for the todo item")},
                  "required": ["content", "status", "priority", "id"], "additionalProperties": False}}},
              ["todos"]),
        _tool("webfetch", _long("Fetches content from a specified URL and returns it in the requested "
                                "format (text, markdown or html).", 4),
              {"url": _s("The URL to fetch content from"),
               "format": {"type": "string", "enum": ["text", "markdown", "html"],
                          "description": "The format to return the content in"},
               "timeout": {"type": "number", "description": "Optional timeout in seconds (max 120)"}},
              ["url", "format"]),
        _tool("write", _long("Writes a file to the local filesystem. This tool will overwrite the "
                             "existing file if there is one at the provided path.", 4),
              {"filePath": _s("The absolute path to the file to write (must be absolute, not relative)"),
               "content": _s("The content to write to the file")},
              ["filePath", "content"]),
    ]


def opencode_request() -> dict[str, Any]:
    return {
        "model": "auto", "stream": True, "max_tokens": 32000, "temperature": 0.2,
        "messages": [
            {"role": "system", "content": system_prompt()},
            {"role": "user", "content": "Add a --dry-run flag to the deploy script that prints every "
                                        "command instead of running it, and a test for it."},
        ],
        "tools": tools(), "tool_choice": "auto",
    }


@pytest.fixture(scope="module")
def request_body() -> dict[str, Any]:
    body = opencode_request()
    size = len(json.dumps(body))
    assert 29_000 <= size <= 33_000, size
    return body


@pytest.fixture(scope="module")
def table() -> RoutingTable:
    return RoutingTable.from_stack(parse_stack(bundled_template_text()))


def _shape(body: dict[str, Any]) -> dict[str, Any]:
    return {"request_bytes": len(json.dumps(body)),
            "system_chars": len(body["messages"][0]["content"]),
            "tools_json_bytes": len(_encode_json(body["tools"])), "tools": len(body["tools"])}


def test_classify(benchmark: Any, request_body: dict[str, Any], table: RoutingTable) -> None:
    benchmark.group = "classify (31 KB opencode request)"
    decision = benchmark(classify, request_body, table)
    median = benchmark.stats.stats.median
    info = {**_shape(request_body), "tier": decision.tier, "reason": decision.reason,
            "median_us": us(median), "goal_le_100us": "met" if median * 1e6 <= GOAL_US else "MISSED"}
    benchmark.extra_info.update(info)
    record("classify on a 31 KB opencode-shaped request", "classify", **info)


def test_classify_after_the_first_turn(benchmark: Any, request_body: dict[str, Any],
                                      table: RoutingTable) -> None:
    """As the app calls it: the raw bytes bound to the app's memo, which the first turn filled."""
    raw = json.dumps(request_body, ensure_ascii=False, separators=(",", ":")).encode()
    memo = RoutingMemo()
    first = classify(request_body, table, memo=memo.for_body(raw))
    benchmark.group = "classify (31 KB opencode request)"
    decision = benchmark(lambda: classify(request_body, table, memo=memo.for_body(raw)))
    assert decision == first == classify(request_body, table)
    median = benchmark.stats.stats.median
    info = {"median_us": us(median),
            "goal_le_20us": "met" if median * 1e6 <= MEMO_GOAL_US else "MISSED"}
    benchmark.extra_info.update(info)
    record("classify on a 31 KB opencode-shaped request", "classify after the first turn", **info)


def test_named_estimate_after_the_first_turn(benchmark: Any, request_body: dict[str, Any]
                                             ) -> None:
    """A request for a tier by name: only the ``x-llmstack-tokens`` estimate, memo bound."""
    raw = json.dumps(request_body, ensure_ascii=False, separators=(",", ":")).encode()
    memo = RoutingMemo()
    first = estimate_tokens(request_body, memo.for_body(raw))
    benchmark.group = "classify (31 KB opencode request)"
    tokens = benchmark(lambda: estimate_tokens(request_body, memo.for_body(raw)))
    assert tokens == first == estimate_tokens(request_body)
    median = benchmark.stats.stats.median
    benchmark.extra_info["median_us"] = us(median)
    record("classify on a 31 KB opencode-shaped request", "named tier: estimate after the first turn",
           median_us=us(median))


CONTEXT = {
    "json.loads(body)  [app.py reads the request]": lambda raw, body: json.loads(raw),
    "json.dumps(body, ensure_ascii=False)  [for scale; app.py no longer re-encodes]":
        lambda raw, body: json.dumps(body, ensure_ascii=False),
    "_encode_json(tools)  [inside classify]": lambda raw, body: _encode_json(body["tools"]),
}


@pytest.mark.parametrize("what", list(CONTEXT))
def test_auto_request_context(benchmark: Any, request_body: dict[str, Any], what: str) -> None:
    raw = json.dumps(request_body).encode()
    benchmark.group = "classify (31 KB opencode request)"
    benchmark(CONTEXT[what], raw, request_body)
    median = benchmark.stats.stats.median
    benchmark.extra_info["median_us"] = us(median)
    record("classify on a 31 KB opencode-shaped request", what, median_us=us(median))
