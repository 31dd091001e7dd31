"""llmstack's app in process, through its ASGI callable: its routes before the swapper's,
``/v1/models`` with ``auto``, auto routing to a tier and the tier named in the answer,
OpenAI-shaped errors on OpenAI's endpoints and Anthropic-shaped ones on Anthropic's
(the real proxy runs; only the upstream wire and the children are fakes)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from llmstack.config.ini import parse_stack
from llmstack.models.hf_cache import HubCache
from llmstack.serving.app import LLMStackApp, Loaded
from llmstack.serving.hosted import HostedTiers
from llmstack.serving.routing import RoutingTable
from llmstack.serving.swapper_config import build_swapper_config
from swapper.front_door import FrontDoor
from swapper.http_app import SwapperApp
from swapper.proxy import UpstreamClient
from tests.unit.asgi import Answer, Canned, FakePool, call, manager, openai_error

INI = """\
[DEFAULT]
threads = 1
memory_budget_mb = 4096

[code-fast]
role = fast
hf_repo = test/tiny
hf_file = fast.gguf
ctx_size = 4096

[code-smart]
role = agent
hf_repo = test/tiny
hf_file = smart.gguf
ctx_size = 65536

[extra]
hf_repo = test/tiny
hf_file = not-downloaded.gguf
ctx_size = 4096

[team]
backend = litellm
model = openai/team
api_base = http://127.0.0.1:9/v1
ctx_size = 8192
"""
CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
HELLO = [{"role": "user", "content": "Say hello"}]
TOO_LONG = [{"role": "user", "content": "word " * 300_000}]  # beyond every window


@asynccontextmanager
async def stack(keys: tuple[str, ...] = (), cors: tuple[str, ...] = (),
                models_ini: Path | None = None) -> AsyncIterator[tuple[LLMStackApp, FakePool]]:
    """The app on INI: code-fast and code-smart downloaded (never read: fake children),
    ``extra`` not; its children are stopped after the test."""
    parsed = parse_stack(INI)
    files = {"code-fast": Path("/models/fast.gguf"), "code-smart": Path("/models/smart.gguf")}
    config = replace(build_swapper_config(parsed, "llama-server", files, HubCache(Path("/hub"))),
                     api_keys=keys)
    loaded = Loaded(parsed, RoutingTable.from_stack(parsed), config, HostedTiers.build(parsed))
    pool = FakePool()
    swapper = SwapperApp(manager(config), UpstreamClient(pool), front=FrontDoor(cors_origins=cors))
    app = LLMStackApp(lambda: loaded, models_ini, swapper, loaded)
    try:
        yield app, pool
    finally:
        await app.manager.shutdown()


def anthropic_error(answer: Answer) -> dict:
    body = answer.json()
    assert body["type"] == "error" and set(body) == {"type", "error"}
    assert set(body["error"]) == {"type", "message"}
    return dict(body["error"])


async def test_models_lists_auto_first_then_tiers_and_aliases_ahead_of_the_swappers_list() -> None:
    async with stack() as (app, _):
        rows = (await call(app, "GET", "/v1/models")).json()["data"]
        assert rows[0]["id"] == "auto" and rows[0]["owned_by"] == "llmstack"
        assert {"code-fast", "code-smart", "extra", "team", "fast", "smart", "coder"} <= {
            r["id"] for r in rows}
        assert (await call(app, "GET", "/models")).json()["data"] == rows
        assert (await call(app, "HEAD", "/v1/models")).status == 200
        smart = (await call(app, "GET", "/v1/models/smart")).json()
        assert (smart["tier"], smart["role"], smart["context_length"]) == ("code-smart", "agent", 65536)


async def test_an_unknown_model_entry_is_a_404_model_not_found() -> None:
    async with stack() as (app, _):
        answer = await call(app, "GET", "/v1/models/nope")
        assert answer.status == 404
        assert openai_error(answer) == {"message": "model 'nope' not found",
                                        "type": "invalid_request_error", "code": "model_not_found"}


async def test_the_swappers_routes_stay_reachable_behind_llmstacks() -> None:
    async with stack() as (app, _):
        assert (await call(app, "GET", "/running")).json()["running"] == []
        assert (await call(app, "GET", "/health")).body == b"OK"
        assert app.router.match("GET", "/v1/models")[0].endpoint == app._models  # type: ignore[index]


async def test_auto_routes_to_a_tier_that_answers_under_its_own_name() -> None:
    async with stack() as (app, pool):
        body = json.dumps({"model": "auto", "messages": HELLO}).encode()
        answer = await call(app, "POST", CHAT, body)
        assert answer.status == 200 and answer.header("x-llmstack-tier") == "code-smart"
        assert int(answer.header("x-llmstack-tokens") or 0) > 0
        assert answer.json()["choices"][0]["message"]["name"] == "code-smart"
        assert answer.json()["model"] == "code-smart"
        [sent] = pool.forwarded
        (row,) = app.manager.running()
        assert (row["model"], sent.port, sent.target) == ("code-smart", row["port"], CHAT)
        # the body re-encoded once: the tier for "model", the output cap it may generate
        cap = int(answer.header("x-llmstack-max-tokens") or 0)
        assert cap > 0 and json.loads(sent.body) == {**json.loads(body), "model": "code-smart",
                                                    "max_tokens": cap}
        routed = [e.fields for e in app.manager.bus.recent if e.kind == "routed"]
        assert [r["tier"] for r in routed] == ["code-smart"]


async def test_a_model_asked_by_alias_is_served_by_its_tier() -> None:
    async with stack() as (app, _):
        answer = await call(app, "POST", CHAT, {"model": "fast", "messages": HELLO})
        assert answer.status == 200 and answer.header("x-llmstack-tier") == "code-fast"
        named = [e.fields for e in app.manager.bus.recent if e.kind == "named"]
        assert named == [{"tier": "code-fast", "model": "fast"}]


@pytest.mark.parametrize("body, status, kind", [
    (b"[1]", 400, "invalid_request_error"),
    (b"{not json", 400, "invalid_request_error"),
    (b'{"model": 5, "messages": []}', 400, "invalid_request_error"),
    (b'{"model": "nope", "messages": []}', 404, None),
])
async def test_errors_take_the_shape_of_the_endpoints_protocol(body: bytes, status: int,
                                                               kind: str | None) -> None:
    async with stack() as (app, pool):
        openai = await call(app, "POST", CHAT, body)
        anthropic = await call(app, "POST", MESSAGES, body)
        assert openai.status == anthropic.status == status
        assert openai_error(openai)["type"] == "invalid_request_error"
        assert anthropic_error(anthropic)["type"] == (kind or "not_found_error")
        assert anthropic_error(anthropic)["message"] == openai_error(openai)["message"]
        assert pool.forwarded == []


async def test_the_front_doors_refusals_are_anthropic_shaped_on_anthropics_endpoints() -> None:
    async with stack(keys=("sekrit",)) as (app, _):
        refused = await call(app, "POST", MESSAGES, {"model": "auto", "messages": HELLO})
        assert refused.status == 401 and anthropic_error(refused)["type"] == "authentication_error"
        assert openai_error(await call(app, "POST", CHAT, {}))["type"] == "authentication_error"
        assert anthropic_error(await call(app, "GET", MESSAGES, headers={"x-api-key": "sekrit"}))[
            "type"] == "not_found_error"  # no route: still Anthropic's shape there
        served = await call(app, "POST", MESSAGES, {"model": "auto", "max_tokens": 4, "messages": HELLO},
                            headers={"x-api-key": "sekrit"})
        assert served.status == 200 and served.header("x-llmstack-tier") == "code-smart"


async def test_a_prompt_beyond_every_window_is_refused_before_any_tier_starts() -> None:
    async with stack() as (app, pool):
        openai = await call(app, "POST", CHAT, {"model": "auto", "messages": TOO_LONG})
        assert openai.status == 400 and openai_error(openai)["code"] == "context_length_exceeded"
        assert int(openai.header("x-llmstack-tokens") or 0) > 65536
        anthropic = await call(app, "POST", MESSAGES, {"model": "auto", "messages": TOO_LONG})
        assert anthropic.status == 400
        assert anthropic_error(anthropic)["type"] == "invalid_request_error"
        assert pool.forwarded == [] and app.manager.running() == []


async def test_a_tier_without_its_file_says_how_to_get_it() -> None:
    async with stack() as (app, pool):
        answer = await call(app, "POST", CHAT, {"model": "extra", "messages": HELLO})
        error = openai_error(answer)
        assert (answer.status, error["code"]) == (503, "model_not_downloaded")
        assert error["message"].endswith("test/tiny/not-downloaded.gguf is not downloaded; "
                                         "run: llmstack download extra")
        assert pool.forwarded == []


async def test_a_hosted_tier_on_an_endpoint_it_does_not_serve_is_a_400() -> None:
    async with stack() as (app, _):
        answer = await call(app, "POST", "/v1/embeddings", {"model": "team", "input": "x"})
        assert answer.status == 400 and openai_error(answer)["code"] == "unsupported_endpoint"


@pytest.mark.parametrize("path, shape", [(CHAT, openai_error), (MESSAGES, anthropic_error)])
async def test_an_upstream_error_is_held_back_and_reshaped_for_the_client(path: str, shape) -> None:
    """llama-server's 500 for an image part is the client's fault: a 400 in the endpoint's
    protocol, still naming the tier."""
    async with stack() as (app, pool):
        pool.answer = Canned(500, "application/json", json.dumps({"error": {
            "code": 500, "message": "image input is not supported", "type": "server_error"}}).encode())
        answer = await call(app, "POST", path, {"model": "fast", "max_tokens": 4, "messages": HELLO})
        assert answer.status == 400 and answer.header("x-llmstack-tier") == "code-fast"
        error = shape(answer)
        assert error["type"] == "invalid_request_error"
        assert error["message"] == "tier 'code-fast' cannot take this input: image input is not supported"


async def test_models_ini_is_served_from_its_file_and_is_a_404_for_the_demo(tmp_path: Path) -> None:
    async with stack() as (app, _):
        answer = await call(app, "GET", "/models.ini")
        assert answer.status == 404 and "no models.ini" in openai_error(answer)["message"]
    (tmp_path / "models.ini").write_text(INI)
    async with stack(models_ini=tmp_path / "models.ini") as (app, _):
        answer = await call(app, "GET", "/models.ini")
        assert (answer.status, answer.body) == (200, INI.encode())
        assert answer.header("content-type") == "text/plain; charset=utf-8"


async def test_a_cors_preflight_is_answered_by_the_same_front_door() -> None:
    origin = "http://ui.example"
    async with stack(cors=(origin,)) as (app, _):
        answer = await call(app, "OPTIONS", MESSAGES, headers={"origin": origin})
        assert answer.status == 204 and answer.header("access-control-allow-origin") == origin
        assert (await call(app, "OPTIONS", "/v1/models")).status == 405  # no Origin: no CORS
