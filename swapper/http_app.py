"""The swapper's HTTP routes as one raw ASGI app (no framework on the hot path).

The routes are a table (:attr:`SwapperApp.routes`, :mod:`swapper.routes`); llmstack
puts its own routes before them and calls :meth:`SwapperApp.serve_model` directly,
so a routed request costs no second HTTP hop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, request_model, shown
from .events import RING_BYTES, RING_EVENTS
from .front_door import FrontDoor, header_bytes, without_credentials
from .listing import model_rows, profiles_payload
from .loading import SCOPE_KEY, LoadingStream, wants_stream
from .manager import Manager
from .observe import RequestMeter
from .proxy import NO_HOOKS, Hooks, Intercepted, UpstreamClient, UpstreamRequest, forward_headers
from .reply import SCOPE_KEY as REPLY_KEY
from .reply import (
    ClientGone,
    DisconnectWatch,
    ErrorBody,
    Reply,
    guarded,
    open_reply,
    openai_error_body,
    send_bytes,
    send_json,
)
from .routes import POST, PUT, Route, Router, lifespan, path_param, routes
from .scheduler import Status
from .sessions.edge import SESSION_PATHS, Pinned, pin
from .status_api import PUBLIC_PATHS, WRITE_BYTES, StatusApi, stream_ring
from .stream_protocols import RAW, protocol_for
from .types import Headers, Receive, Scope, Send
from .upstream_path import raw_path, upstream_target

log = logging.getLogger("swapper")

MODEL_POST_PATHS = frozenset({
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/reranking",
    "/rerank", "/reranking", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses",
    "/infill", "/completion", "/v1/audio/speech", "/v1/audio/transcriptions",
    "/v1/images/generations", "/v1/images/edits",
})
DEFAULT_MAX_BODY = 64 * 1024 * 1024
LOG_BEHIND = (f"[swapper] this follower fell behind (more than {RING_EVENTS} lines or "
              f"{RING_BYTES // 1024} KiB unread): lines were lost; reconnect\n").encode()
RAW_HOOKS = Hooks(protocol=RAW)
"""``/upstream/...``: the stream is complete when it ends cleanly."""
UPSTREAM_CONTEXT = {"via": "upstream"}
"""What an ``/upstream/...`` request's ``request_done`` event carries: a pass-through to a
model's own API (``/tokenize``, ``/props``, ...), not a routing decision."""
_MULTIPART_MODEL = re.compile(rb'name="model"\r\n\r\n([^\r\n]*)\r\n')


def _too_large(limit: int) -> ApiError:
    # Close the connection: the rest of the body is never read.
    return ApiError(413, f"request body larger than {limit} bytes", "request_too_large",
                    {"connection": "close"})


async def read_body(scope: Scope, receive: Receive, limit: int = DEFAULT_MAX_BODY) -> bytes:
    """The whole request body; 413 past ``limit``, from Content-Length before reading any;
    :class:`ClientGone` if the client leaves first."""
    declared = header_bytes(scope, b"content-length")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; 400 otherwise."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


def model_from_body(body: bytes, content_type: str) -> tuple[str, dict[str, Any] | None]:
    """The requested model and the decoded JSON body (None for multipart)."""
    if content_type.startswith("multipart/form-data"):
        match = _MULTIPART_MODEL.search(body)
        if match is None:
            raise ApiError(400, "multipart request without a 'model' field")
        try:
            return request_model(match.group(1).decode()), None
        except UnicodeDecodeError:
            raise ApiError(400, "multipart 'model' field is not UTF-8") from None
    data = json_object(body)
    return request_model(data.get("model")), data


def _pieces(lines: Iterable[str], size: int = WRITE_BYTES) -> Iterator[bytes]:
    """``lines``, each with its newline, in pieces of about ``size`` characters."""
    piece: list[str] = []
    count = 0
    for line in lines:
        piece.append(line + "\n")
        count += len(line) + 1
        if count >= size:
            yield "".join(piece).encode("utf-8", "replace")
            piece, count = [], 0
    if piece:
        yield "".join(piece).encode("utf-8", "replace")


def header(scope: Scope, name: bytes) -> str:
    """The first value of a (lower-case) request header as text, "" when absent."""
    return header_bytes(scope, name).decode("latin-1")


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """A request for a model: ``body`` (``data``, its decoded JSON, when there is one) for
    ``model``'s ``path``, its answer handled by ``hooks``; ``context`` (e.g. the routing
    reason) goes into the request's ``request_done`` event."""

    model: str
    path: str
    body: bytes
    data: dict[str, Any] | None = None
    hooks: Hooks = NO_HOOKS
    context: dict[str, Any] | None = None


class SwapperApp:
    """ASGI app serving the swapper's routes over a :class:`Manager`."""

    def __init__(self, manager: Manager, upstream: UpstreamClient | None = None,
                 max_body: int = DEFAULT_MAX_BODY, front: FrontDoor | None = None) -> None:
        self.manager = manager
        self.upstream = upstream or UpstreamClient(manager.http)
        self.max_body = max_body
        self.front = front or FrontDoor()
        self.status_api = StatusApi(manager, MODEL_POST_PATHS)
        self.routes: list[Route] = [
            *routes(MODEL_POST_PATHS, self._model_post, POST),
            Route("/upstream/{target:path}", self._upstream, None),
            *routes(("/v1/models", "/models"), self._models),
            Route("/running", self._running),
            Route("/health", self._health),
            *routes(("/unload", "/api/models/unload"), self._unload_all, POST),
            *routes(("/unload/{model:path}", "/api/models/unload/{model:path}"), self._unload, POST),
            Route("/logs", self._logs),
            Route("/logs/stream/{model:path}", self._log_stream),
            Route("/api/profiles", self._profiles),
            Route("/api/profiles/active", self._set_profile, PUT),
            Route("/events", self._events),
            *self.status_api.routes,
        ]
        """The swapper's routes, in the order they are tried."""
        self.router = Router(self.routes)

    async def startup(self) -> None:
        await self.manager.start()

    def begin_shutdown(self) -> None:
        """The server starts shutting down (before it waits for open connections): long-lived
        streams (``/api/events``, ``/logs/stream``) end; requests in flight carry on."""
        self.manager.begin_shutdown()

    async def shutdown(self) -> None:
        await self.manager.shutdown()
        await self.upstream.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, self.startup, self.shutdown)
        elif scope["type"] == "http":
            await self.serve_http(scope, receive, send, self.router)

    async def serve_http(self, scope: Scope, receive: Receive, send: Send, router: Router,
                         render: ErrorBody = openai_error_body) -> None:
        """One HTTP request: admission, CORS, HEAD as GET, then the endpoint ``router`` finds;
        errors as JSON spelled by ``render``."""
        cors = self.front.cors_headers(scope)
        if scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}  # uvicorn still sees HEAD and drops the body
        reply = open_reply(scope, send, cors)
        try:
            await guarded(reply, lambda out: self._admit(scope, receive, out, router, bool(cors)),
                          render)
        finally:  # uvicorn keeps the scope in reference cycles until a full collection:
            scope.pop(REPLY_KEY, None)  # not the answer's last chunks with it
            scope.pop(SCOPE_KEY, None)

    async def _admit(self, scope: Scope, receive: Receive, send: Send, router: Router,
                     cors: bool) -> None:
        self.front.admit(scope, self.manager.config.api_keys, PUBLIC_PATHS)
        if scope["method"] == "OPTIONS":
            if not cors:
                raise ApiError(405, "OPTIONS is answered only for configured CORS origins",
                               headers={"allow": "GET, POST, HEAD"})
            await send({"type": "http.response.start", "status": 204,
                        "headers": self.front.preflight_headers(scope)})
            await send({"type": "http.response.body", "body": b""})
            return
        await router.endpoint(scope)(scope, receive, send)

    async def _model_post(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(scope, receive, self.max_body)
        model, data = model_from_body(body, header(scope, b"content-type"))
        await self.serve_model(scope, receive, send, ModelRequest(model, scope["path"], body, data))

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"object": "list", "data": self.model_list()})

    async def _running(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"running": self.manager.running(), "pid": os.getpid()})

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, b"OK", "text/plain")

    async def _unload_all(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"unloaded": await self.manager.unload()})

    async def _unload(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = path_param(scope, "model")
        await send_json(send, 200, {"unloaded": await self.manager.unload(model)})

    async def _logs(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self._all_logs().encode(), "text/plain; charset=utf-8")

    async def _profiles(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, profiles_payload(self.manager.names))

    async def _set_profile(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = json_object(await read_body(scope, receive, self.max_body))
        name = data.get("name", 0)
        if not (name is None or isinstance(name, str)):
            raise ApiError(400, "'name' must be a profile's name or null")
        self.manager.names.set_profile(name or None)
        await send_json(send, 200, profiles_payload(self.manager.names))

    async def _events(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, [e.as_dict() for e in self.manager.bus.recent])

    def model_list(self) -> list[dict[str, Any]]:
        return model_rows(self.manager.config, self.manager.scheduler.running(),
                          self.manager.port_of)

    async def serve_model(self, scope: Scope, receive: Receive, send: Send,
                          request: ModelRequest) -> Intercepted | None:
        """Acquire ``request.model`` (loading it if needed) and stream its answer to the client.

        An answer its hooks intercept is returned, not sent. A streamed request that must
        wait (a load, a swap, a drain) is answered at once and kept alive meanwhile
        (:mod:`swapper.loading`); 404/429 stay plain errors.
        """
        model, path, hooks = request.model, request.path, request.hooks
        reply = Reply.of(scope, send)
        watch = DisconnectWatch(scope, receive, reply)
        resolved = self.manager.config.resolve(model)
        loading: LoadingStream | None = scope.get(SCOPE_KEY)
        meter = RequestMeter(self.manager.bus, resolved or "-", path, request.context)

        async def start_loading() -> None:  # the request must wait: answer it now
            nonlocal loading
            loading = LoadingStream(reply.send, resolved or model,
                                    bool(spec and spec.send_loading_state),
                                    chat=path == "/v1/chat/completions")
            scope[SCOPE_KEY] = loading
            await loading.begin(list(hooks.extra_headers))

        spec = self.manager.config.models.get(resolved) if resolved else None
        early = loading is None and spec is not None and wants_stream(path, request.data)
        try:
            async with self.manager.lease(model, start_loading if early else None) as lease:
                if loading is not None:
                    await loading.ready()
                    reply.restart_clock()
                query = scope.get("query_string", b"")
                body = self._rewrite_body(lease.spec, request.body, request.data, lease.params)
                pinned: Pinned | None = None
                if (data := request.data) is not None and path in SESSION_PATHS and (
                        child := self.manager.sessions.get(lease.model)) is not None:
                    body, pinned = await pin(child, scope["headers"], path, data, body)
                upstream = UpstreamRequest(
                    scope["method"], lease.base_url,
                    path + ("?" + query.decode("latin-1") if query else ""),
                    self._forwarded_headers(scope, lease.spec), body, lease.spec.timeouts, hooks)
                out = loading.send if loading is not None else reply.send
                answer = await (self.upstream.forward(upstream, out) if pinned is None
                                else self._forward_pinned(upstream, out, pinned))
                if answer is None:  # answered (a held-back answer is the caller's to send)
                    meter.finish(reply, loading.status if loading is not None else 0)
                return answer
        except ApiError as error:
            meter.finish(reply, error.status)
            if loading is None:
                raise
            await loading.fail(error)
            return None
        except asyncio.CancelledError:
            meter.finish(reply, 499 if watch.disconnected else 503)  # 499: nginx's "client closed"
            if loading is not None:
                await loading.ready()
            # Not the client leaving: the server ends the request (uvicorn cancels what still
            # runs when its graceful-shutdown period is over). Never cut a stream silently.
            if watch.disconnected or (not reply.complete
                                      and await reply.end_with_error(
                                          "the server is shutting down",
                                          hooks.protocol or protocol_for(path))):
                return None
            raise
        finally:
            if loading is not None:
                await loading.ready()
            watch.close()

    async def _forward_pinned(self, upstream: UpstreamRequest, send: Send,
                              pinned: Pinned) -> Intercepted | None:
        """Forward a request pinned to its session's slot; the pin ends with it."""
        answered = False
        try:
            answer = await self.upstream.forward(upstream, pinned.wrap(send))
            answered = answer is None
            return answer
        finally:
            pinned.close(answered)

    def _forwarded_headers(self, scope: Scope, spec: Any) -> Headers:
        headers = without_credentials(forward_headers(scope["headers"]),
                                      self.manager.config.api_keys)
        if spec.headers:  # a peer's own key replaces whatever the client sent
            own = {k.lower().encode() for k in spec.headers}
            headers = [(k, v) for k, v in headers if k.lower() not in own]
            headers += [(k.encode(), v.encode()) for k, v in spec.headers.items()]
        return headers

    async def send_intercepted(self, scope: Scope, send: Send, answer: Intercepted) -> None:
        """Send an answer :meth:`serve_model` held back (an SSE error event once loading began)."""
        loading: LoadingStream | None = scope.get(SCOPE_KEY)
        target = loading.send if loading is not None else send
        await target({"type": "http.response.start", "status": answer.status,
                      "headers": answer.headers})
        await target({"type": "http.response.body", "body": answer.body, "more_body": False})

    @staticmethod
    def _rewrite_body(spec: Any, body: bytes, data: dict[str, Any] | None,
                      params: Mapping[str, Any]) -> bytes:
        """Apply ``useModelName``, filters and ``setParamsByID`` ``params``; re-encode only
        when something changed."""
        filters = spec.filters
        if not (spec.use_model_name or filters.strip_params or filters.set_params or params):
            return body
        if data is None:
            try:
                data = json.loads(body)
            except ValueError:
                return body
            if not isinstance(data, dict):
                return body
        data = dict(data)
        for key in filters.strip_params:
            if key != "model":
                data.pop(key, None)
        data.update({k: v for k, v in filters.set_params.items() if k != "model"})
        data.update({k: v for k, v in params.items() if k != "model"})
        if spec.use_model_name:
            data["model"] = spec.use_model_name
        return json.dumps(data).encode()

    async def _upstream(self, scope: Scope, receive: Receive, send: Send) -> None:
        model, path = upstream_target(raw_path(scope), scope.get("query_string", b""),
                                      self.manager.config.resolve)
        self._refuse_ignored_path(model, path)
        body = await read_body(scope, receive, self.max_body)
        await self.serve_model(scope, receive, send, ModelRequest(model, path, body, hooks=RAW_HOOKS,
                                                                  context=UPSTREAM_CONTEXT))

    def _refuse_ignored_path(self, name: str, path: str) -> None:
        """llama-swap's ``upstream.ignorePaths``: such a path never starts a model (409)."""
        config = self.manager.config
        model = config.resolve(name) or name
        if (any(re.search(p, path) for p in config.upstream_ignore_paths)
                and self.manager.scheduler.status.get(model, Status.READY) is not Status.READY):
            raise ApiError(409, f"model {model} is not loaded; path matches upstream.ignorePaths")

    def _all_logs(self) -> str:
        parts = [f"== {name} ==\n" + "\n".join(sink.lines) for name, sink in self.manager.logs.items()]
        return "\n".join(parts) + "\n"

    async def _log_stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A model's log (its buffered lines unless ``?no-history``), then each new line; a
        follower that falls behind gets a last line saying so (:func:`stream_ring`)."""
        name = path_param(scope, "model")
        model = self.manager.config.resolve(name)
        if model is None:
            raise ApiError(404, f"model '{shown(name)}' not found")
        sink = self.manager.log_for(model)

        def history() -> Iterable[bytes]:  # the lines as of now, sent a piece at a time
            if b"no-history" in scope.get("query_string", b""):
                return ()
            return _pieces(list(sink.lines))

        await stream_ring(scope, receive, send, sink.live, sink.live.reader,
                          b"text/plain; charset=utf-8", history, lambda: LOG_BEHIND)
