"""Units: the route table's matching (first route wins, path parameters, methods) and the
ASGI lifespan helper."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from swapper.errors import ApiError
from swapper.routes import POST, PUT, Route, Router, lifespan, path_param
from swapper.types import Receive, Scope, Send


def endpoint(name: str) -> Any:
    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"route": name, "params": dict(scope.get("path_params", {}))})
    answer.__name__ = name
    return answer


def served(router: Router, method: str, path: str) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    scope = {"method": method, "path": path}
    asyncio.run(router.endpoint(scope)(scope, receive, send))
    return sent[0]


TABLE = Router([
    Route("/v1/chat", endpoint("chat"), POST),
    Route("/v1/models/{model:path}", endpoint("entry")),
    Route("/v1/models", endpoint("models")),
    Route("/upstream/{target:path}", endpoint("upstream"), None),
    Route("/items/{item}/tags", endpoint("tags")),
    Route("/v1/models/special", endpoint("shadowed")),  # a template before it matches first
    Route("/v1/chat", endpoint("chat-get")),
    Route("/profile", endpoint("profile-put"), PUT),
])


@pytest.mark.parametrize("method, path, route, params", [
    ("POST", "/v1/chat", "chat", {}),
    ("GET", "/v1/chat", "chat-get", {}),  # the same path, another method: a later route
    ("GET", "/v1/models", "models", {}),
    ("GET", "/v1/models/org/model", "entry", {"model": "org/model"}),
    ("GET", "/v1/models/", "entry", {"model": ""}),  # the rest of the path, empty included
    ("GET", "/v1/models/special", "entry", {"model": "special"}),
    ("DELETE", "/upstream/m/a?b", "upstream", {"target": "m/a?b"}),  # None: any method
    # a decoded path may hold anything: its route still takes it (and refuses it itself)
    ("GET", "/upstream/m/x\r\nX-Injected: 1", "upstream", {"target": "m/x\r\nX-Injected: 1"}),
    ("GET", "/items/a\nb/tags", "tags", {"item": "a\nb"}),
    ("GET", "/items/a.b/tags", "tags", {"item": "a.b"}),
    ("PUT", "/profile", "profile-put", {}),
])
def test_the_first_matching_route_answers(method: str, path: str, route: str,
                                          params: dict[str, str]) -> None:
    assert served(TABLE, method, path) == {"route": route, "params": params}


@pytest.mark.parametrize("method, path", [
    ("GET", "/profile"), ("POST", "/v1/models"), ("GET", "/items/a/b/tags"), ("GET", "/items//tags"),
    ("GET", "/v1/modelsx"), ("GET", "/upstream"), ("GET", "/nowhere"),
])
def test_no_route_is_a_404_naming_method_and_path(method: str, path: str) -> None:
    with pytest.raises(ApiError) as raised:
        served(TABLE, method, path)
    assert (raised.value.status, raised.value.message) == (404, f"no route for {method} {path}")


def test_a_template_param_is_read_from_the_scope() -> None:
    route, params = TABLE.match("GET", "/v1/models/x/y") or (None, None)
    assert route is not None and route.path == "/v1/models/{model:path}"
    assert path_param({"path_params": params}, "model") == "x/y"
    assert TABLE.match("GET", "/v1/models") == (TABLE.table[2], None)


def _lifespan_run(startup_fails: bool) -> list[str]:
    events: list[str] = []
    inbox = asyncio.Queue[dict[str, Any]]()

    async def startup() -> None:
        events.append("startup")
        if startup_fails:
            raise RuntimeError("no port")

    async def shutdown() -> None:
        events.append("shutdown")

    async def send(message: dict[str, Any]) -> None:
        events.append(message["type"] + (f": {message['message']}" if "message" in message else ""))
        if message["type"] == "lifespan.startup.complete":
            inbox.put_nowait({"type": "lifespan.shutdown"})

    async def run() -> None:
        inbox.put_nowait({"type": "lifespan.startup"})
        await asyncio.wait_for(lifespan(inbox.get, send, startup, shutdown), 5)

    asyncio.run(run())
    return events


def test_lifespan_starts_and_stops_once() -> None:
    assert _lifespan_run(False) == ["startup", "lifespan.startup.complete", "shutdown",
                                    "lifespan.shutdown.complete"]


def test_a_failed_startup_is_reported_to_the_server() -> None:
    assert _lifespan_run(True) == ["startup", "lifespan.startup.failed: no port"]
