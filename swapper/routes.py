"""The HTTP routes as one declarative table, and the ASGI lifespan.

A :class:`Route` is a path template, the methods it answers and an endpoint, an
ASGI app of its own; a :class:`Router` dispatches to the first route of its table
that matches a request (llmstack's table is its own routes, then the swapper's).
A template's ``{name}`` matches one path segment, ``{name:path}`` the rest of the
path (slashes included; it may be empty); the values are in the scope's
``path_params``. HEAD reaches the router as GET (:meth:`SwapperApp.serve_http
<swapper.http_app.SwapperApp.serve_http>`: the server drops the body), so every
GET route answers it; a request no route takes is a 404 naming its method and path.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from .errors import ApiError
from .types import ASGIApp, Receive, Scope, Send

GET, POST, PUT = frozenset({"GET"}), frozenset({"POST"}), frozenset({"PUT"})
PARAMS_KEY = "path_params"
"""Scope key of a matched template's values (as in Starlette)."""
_PARAM = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)(:path)?\}")


def _pattern(template: str) -> re.Pattern[str] | None:
    """The regex of a template with parameters; None for a literal path."""
    if _PARAM.search(template) is None:
        return None
    parts, end = [], 0
    for match in _PARAM.finditer(template):
        parts += [re.escape(template[end:match.start()]),
                  f"(?P<{match[1]}>{'.*' if match[2] else '[^/]+'})"]
        end = match.end()
    return re.compile("".join([*parts, re.escape(template[end:])]), re.DOTALL)  # any byte


@dataclass(frozen=True)
class Route:
    """``endpoint`` answers ``methods`` (None: any method) on ``path``, a template."""

    path: str
    endpoint: ASGIApp
    methods: frozenset[str] | None = GET
    pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _pattern(self.path))


def routes(paths: Iterable[str], endpoint: ASGIApp,
           methods: frozenset[str] | None = GET) -> list[Route]:
    """One route per path, all to ``endpoint``."""
    return [Route(path, endpoint, methods) for path in paths]


class Router:
    """Dispatches a request to the first route of ``table`` that matches it.

    Literal paths are found by a dict lookup; templates are tried in order only up
    to the first literal match, so the table's order decides, at the cost of one
    lookup on the hot path (the model endpoints are literal)."""

    def __init__(self, table: Iterable[Route]) -> None:
        self.table = list(table)
        self._literal: dict[str, list[tuple[int, Route]]] = {}
        self._templates: list[tuple[int, Route, re.Pattern[str], str]] = []
        for index, route in enumerate(self.table):
            if route.pattern is None:
                self._literal.setdefault(route.path, []).append((index, route))
            else:
                prefix = route.path[:route.path.index("{")]
                self._templates.append((index, route, route.pattern, prefix))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str] | None] | None:
        """The first route for ``method`` and ``path`` and its parameters (None for a literal
        path), or None."""
        limit, found = len(self.table), None
        for index, route in self._literal.get(path, ()):
            if route.methods is None or method in route.methods:
                limit, found = index, route
                break
        for index, route, pattern, prefix in self._templates:
            if index > limit:
                break
            if path.startswith(prefix) and (route.methods is None or method in route.methods):
                params = pattern.fullmatch(path)
                if params is not None:
                    return route, params.groupdict()
        return None if found is None else (found, None)

    def endpoint(self, scope: Scope) -> ASGIApp:
        """The endpoint of the first route for the request, its template's values put in the
        scope; a 404 when there is none. (Resolved before the endpoint runs, not by awaiting
        the router: a coroutine less to resume on every chunk the answer waits for.)"""
        method, path = scope["method"], scope["path"]
        matched = self.match(method, path)
        if matched is None:
            raise ApiError(404, f"no route for {method} {path}")
        route, params = matched
        if params is not None:
            scope[PARAMS_KEY] = params
        return route.endpoint


def path_param(scope: Scope, name: str) -> str:
    """The value of a matched template's parameter ``name``."""
    value: str = scope[PARAMS_KEY][name]
    return value


async def lifespan(receive: Receive, send: Send, startup: Callable[[], Awaitable[None]],
                   shutdown: Callable[[], Awaitable[None]]) -> None:
    """Answer the ASGI lifespan protocol: ``startup`` once the server starts (its failure is
    reported to the server, which exits), ``shutdown`` once it stops."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
