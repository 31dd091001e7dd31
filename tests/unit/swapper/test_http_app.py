"""The swapper's HTTP edge in process, through its ASGI callable: the route table, the
front door (keys, hosts, origins, CORS), error shapes, body limits, and a model request
reaching its child through the real proxy (only the upstream wire is a fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest

from swapper.config import ModelSpec, SwapperConfig
from swapper.front_door import FrontDoor
from swapper.http_app import SwapperApp
from swapper.proxy import UpstreamClient
from tests.unit.asgi import Canned, FakePool, call, manager, openai_error

CONFIG = SwapperConfig(models={
    "m": ModelSpec("m", cmd=("srv", "${PORT}"), aliases=("alias",)),
    "other": ModelSpec("other", cmd=("srv", "${PORT}")),
}, start_port=7000)
CHAT = "/v1/chat/completions"
HELLO = {"model": "alias", "messages": [{"role": "user", "content": "hi"}]}


@asynccontextmanager
async def swapper(config: SwapperConfig = CONFIG, **kw: object) -> AsyncIterator[tuple[SwapperApp, FakePool]]:
    """A SwapperApp over ready-at-once children and a fake upstream wire; its children are
    stopped after the test."""
    pool = FakePool()
    app = SwapperApp(manager(config), UpstreamClient(pool), **kw)  # type: ignore[arg-type]
    try:
        yield app, pool
    finally:
        await app.manager.shutdown()


async def test_models_lists_every_model_and_alias_on_both_paths() -> None:
    async with swapper() as (app, _):
        answer = await call(app, "GET", "/v1/models")
        assert answer.status == 200 and answer.json()["object"] == "list"
        assert [row["id"] for row in answer.json()["data"]] == ["m", "alias", "other"]
        assert (await call(app, "GET", "/models")).body == answer.body


async def test_head_is_answered_as_get() -> None:
    async with swapper() as (app, _):
        for path in ("/health", "/v1/models", "/running"):
            head, get = await call(app, "HEAD", path), await call(app, "GET", path)
            assert (head.status, head.header("content-type")) == (get.status, get.header("content-type"))


@pytest.mark.parametrize("method, path", [
    ("GET", "/nowhere"), ("POST", "/v1/models"), ("GET", CHAT), ("DELETE", "/health"),
    ("GET", "/unload"), ("PUT", "/api/profiles"),
])
async def test_a_request_no_route_takes_is_a_404_naming_method_and_path(method: str, path: str) -> None:
    """The table has no 405: a method a path does not answer is a 404 like an unknown path."""
    async with swapper() as (app, _):
        answer = await call(app, method, path)
        assert answer.status == 404
        assert openai_error(answer) == {"message": f"no route for {method} {path}",
                                        "type": "invalid_request_error", "code": "404"}


async def test_every_route_of_the_table_is_reached_by_its_own_path() -> None:
    """No route is shadowed by an earlier one (first match wins)."""
    async with swapper() as (app, _):
        for route in app.routes:
            if route.pattern is None:
                for method in sorted(route.methods or {"GET", "POST", "DELETE"}):
                    assert app.router.match(method, route.path) == (route, None), route.path


async def test_options_without_cors_is_a_405_naming_the_methods() -> None:
    async with swapper() as (app, _):
        answer = await call(app, "OPTIONS", "/v1/models")
        assert answer.status == 405 and answer.header("allow") == "GET, POST, HEAD"
        assert openai_error(answer)["type"] == "invalid_request_error"


async def test_a_preflight_from_a_configured_origin_is_204_and_its_requests_get_cors_headers() -> None:
    origin = "http://ui.example"
    async with swapper(front=FrontDoor(cors_origins=(origin,))) as (app, _):
        answer = await call(app, "OPTIONS", CHAT, headers={
            "origin": origin, "access-control-request-headers": "x-custom"})
        assert (answer.status, answer.body) == (204, b"")
        assert answer.header("access-control-allow-origin") == origin
        assert answer.header("access-control-allow-methods") == "GET, POST, HEAD, OPTIONS"
        assert answer.header("access-control-allow-headers") == "x-custom"
        listed = await call(app, "GET", "/v1/models", headers={"origin": origin})
        assert listed.status == 200 and listed.header("access-control-allow-origin") == origin
        other = await call(app, "OPTIONS", CHAT, headers={"origin": "http://evil.example"})
        assert other.status == 403 and openai_error(other)["code"] == "forbidden_origin"
        assert other.header("access-control-allow-origin") is None


@pytest.mark.parametrize("headers, status", [
    ({}, 401), ({"authorization": "Bearer wrong"}, 401), ({"authorization": "sekrit"}, 401),
    ({"authorization": "Bearer sekrit"}, 200), ({"x-api-key": "sekrit"}, 200),
])
async def test_with_keys_every_route_needs_one(headers: dict[str, str], status: int) -> None:
    async with swapper(replace(CONFIG, api_keys=("sekrit",))) as (app, _):
        answer = await call(app, "GET", "/v1/models", headers=headers)
        assert answer.status == status
        if status == 401:
            assert openai_error(answer) == {"message": "missing or wrong API key",
                                            "type": "authentication_error", "code": "401"}
        assert (await call(app, "GET", "/health")).status == 200  # public


@pytest.mark.parametrize("headers, code", [
    ({"host": "evil.example"}, "forbidden_host"), ({"host": "127.0.0.1:1"}, "forbidden_host"),
    ({"origin": "http://evil.example"}, "forbidden_origin"),
])
async def test_without_a_key_only_local_names_and_the_own_origin_are_served(
        headers: dict[str, str], code: str) -> None:
    async with swapper() as (app, pool):
        answer = await call(app, "POST", CHAT, HELLO, headers=headers)
        assert answer.status == 403
        assert openai_error(answer)["type"] == "permission_error" and openai_error(answer)["code"] == code
        assert pool.forwarded == [] and app.manager.running() == []


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "request body is not valid JSON"),
    (b"[1]", 400, "request body must be a JSON object"),
    (b'{"messages": []}', 400, "request has no 'model'"),
    (b'{"model": 5}', 400, "'model' must be a string"),
    (b'{"model": "nope"}', 404, "model 'nope' not found"),
])
async def test_a_bad_model_request_is_a_typed_client_error(body: bytes, status: int, message: str) -> None:
    async with swapper() as (app, pool):
        answer = await call(app, "POST", CHAT, body, headers={"content-type": "application/json"})
        error = openai_error(answer)
        assert (answer.status, error["type"]) == (status, "invalid_request_error")
        assert error["message"].startswith(message) and pool.forwarded == []


@pytest.mark.parametrize("declare_length", [True, False])
async def test_a_body_over_the_limit_is_a_413_and_closes_the_connection(declare_length: bool) -> None:
    async with swapper(max_body=100) as (app, pool):
        answer = await call(app, "POST", CHAT, {**HELLO, "pad": "x" * 200},
                            declare_length=declare_length)
        assert answer.status == 413 and answer.header("connection") == "close"
        assert openai_error(answer) == {"message": "request body larger than 100 bytes",
                                        "type": "invalid_request_error", "code": "request_too_large"}
        assert pool.forwarded == []


async def test_a_model_request_reaches_its_child_through_the_proxy_unchanged() -> None:
    async with swapper() as (app, pool):
        body = b'{"model": "alias", "messages": []}'
        answer = await call(app, "POST", CHAT, body, query=b"x=1",
                            headers={"authorization": "Bearer client-own", "connection": "keep-alive"})
        assert (answer.status, answer.body) == (200, pool.answer.body)
        [sent] = pool.forwarded
        (row,) = app.manager.running()
        assert (row["model"], row["state"], row["in_flight"]) == ("m", "ready", 0)
        assert (sent.method, sent.host, sent.port, sent.target) == ("POST", "127.0.0.1", row["port"],
                                                                   CHAT + "?x=1")
        assert sent.body == body  # no filter, nothing rewritten
        assert sent.header(b"accept-encoding") == b"identity" and sent.header(b"connection") is None
        assert sent.header(b"authorization") == b"Bearer client-own"  # no keys: not ours


async def test_with_keys_the_stacks_key_never_goes_upstream() -> None:
    async with swapper(replace(CONFIG, api_keys=("sekrit",))) as (app, pool):
        for auth in ({"authorization": "Bearer sekrit"}, {"x-api-key": "sekrit"}):
            assert (await call(app, "POST", CHAT, HELLO, headers=auth)).status == 200
        assert [s.header(b"authorization") or s.header(b"x-api-key") for s in pool.forwarded] == [None, None]


async def test_an_upstream_error_page_becomes_a_json_error() -> None:
    async with swapper() as (app, pool):
        pool.answer = Canned(502, "text/html", b"<html><body><b>Bad</b> gateway</body></html>")
        answer = await call(app, "POST", CHAT, HELLO)
        assert answer.status == 502
        assert openai_error(answer) == {
            "message": "upstream answered 502 with text/html: Bad gateway",
            "type": "server_error", "code": "upstream_error"}


async def test_unload_stops_what_runs_and_running_agrees() -> None:
    async with swapper() as (app, _):
        assert (await call(app, "POST", CHAT, HELLO)).status == 200
        assert [r["model"] for r in (await call(app, "GET", "/running")).json()["running"]] == ["m"]
        assert (await call(app, "POST", "/unload/alias")).json() == {"unloaded": ["m"]}
        assert (await call(app, "GET", "/running")).json()["running"] == []


async def test_a_request_is_one_request_done_event_with_its_status() -> None:
    async with swapper() as (app, _):
        await call(app, "POST", CHAT, HELLO)
        await call(app, "POST", CHAT, {"model": "nope"})
        assert [(e.fields["model"], e.fields["status"]) for e in app.manager.bus.recent
                if e.kind == "request_done"] == [("m", 200), ("-", 404)]


async def test_a_stream_with_as_many_readers_as_it_takes_refuses_one_more() -> None:
    """Each reader of /api/events holds a connection and its socket buffer: past
    RING_READERS a new one is a 503 with Retry-After, and the readers there keep theirs."""
    import asyncio
    from contextlib import ExitStack

    from swapper.events import RING_READERS

    async with swapper() as (app, _):
        ring = app.status_api.feed.ring
        with ExitStack() as readers:
            for _ in range(RING_READERS):
                readers.enter_context(ring.reader())
            answer = await asyncio.wait_for(call(app, "GET", "/api/events"), 5)  # not a stream
            assert answer.status == 503 and answer.header("retry-after") == "5"
            assert openai_error(answer)["code"] == "too_many_readers"
            assert ring.readers == RING_READERS
