"""A loopback fake of two hosted providers: OpenAI chat completions and Anthropic Messages.

Every request body is logged (``GET /_log``); ``POST /_mode`` sets how the next
requests are answered: ``{"mode": "ok", "delay_ms": 0}`` (OpenAI streams wait that
long before each text delta; ``GET /_disconnects`` counts callers that left),
``{"mode": "cut"}`` (a stream ends after two text deltas, with no finish and no
terminator) or ``{"mode": "error", "status": 429, "type": "rate_limit_error",
"message": "..."}`` in the provider's own error shape.

    python tests/hosted/provider_fake.py --port 18080
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from aiohttp import web

WORDS = ("hello ", "from ", "the ", "fake ", "provider")


def _sse(payload: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(payload).encode() + b"\n\n"


def _openai_chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    return _sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                 "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def build_app() -> web.Application:
    state: dict[str, Any] = {"mode": {"mode": "ok"}, "log": [], "disconnects": 0}

    def error(anthropic: bool) -> web.Response:
        mode = state["mode"]
        message = mode.get("message", "provider refused")
        if anthropic:
            body = {"type": "error",
                    "error": {"type": mode.get("type", "api_error"), "message": message}}
        else:
            body = {"error": {"message": message, "type": mode.get("type", "server_error"),
                              "code": mode.get("code")}}
        return web.json_response(body, status=int(mode.get("status", 500)))

    async def openai(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state["log"].append({"path": request.path, "body": body,
                             "authorization": request.headers.get("authorization", ""),
                             "x-evil": request.headers.get("x-evil", "")})
        if state["mode"]["mode"] == "error":
            return error(False)
        model = body.get("model", "fake")
        words = WORDS[:max(1, min(len(WORDS), int(body.get("max_tokens") or len(WORDS))))]
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(words)}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": len(words),
                          "total_tokens": 7 + len(words)}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_openai_chunk(model, {"role": "assistant", "content": ""}))
        for index, word in enumerate(words):
            if state["mode"]["mode"] == "cut" and index == 2:
                return resp  # the provider goes away: no finish_reason, no [DONE]
            try:
                await asyncio.sleep(state["mode"].get("delay_ms", 0) / 1000)
                await resp.write(_openai_chunk(model, {"content": word}))
            except (ConnectionResetError, asyncio.CancelledError):
                state["disconnects"] += 1  # the caller went away mid-stream
                raise
        await resp.write(_openai_chunk(model, {}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(_sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                   "created": 0, "model": model, "choices": [],
                                   "usage": {"prompt_tokens": 7, "completion_tokens": len(words),
                                             "total_tokens": 7 + len(words)}}))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def anthropic(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state["log"].append({"path": request.path, "body": body,
                             "x-api-key": request.headers.get("x-api-key", ""),
                             "x-evil": request.headers.get("x-evil", "")})
        if state["mode"]["mode"] == "error":
            return error(True)
        model = body.get("model", "claude-fake")
        words = WORDS[:max(1, min(len(WORDS), int(body.get("max_tokens") or len(WORDS))))]
        usage = {"input_tokens": 7, "output_tokens": len(words)}
        if not body.get("stream"):
            return web.json_response({
                "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "".join(words)}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_sse({"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 7, "output_tokens": 0}}}, "message_start"))
        await resp.write(_sse({"type": "content_block_start", "index": 0,
                               "content_block": {"type": "text", "text": ""}},
                              "content_block_start"))
        for index, word in enumerate(words):
            if state["mode"]["mode"] == "cut" and index == 2:
                return resp  # no content_block_stop, message_delta or message_stop
            await resp.write(_sse({"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": word}},
                                  "content_block_delta"))
        await resp.write(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        await resp.write(_sse({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                 "stop_sequence": None},
                               "usage": {"output_tokens": len(words)}}, "message_delta"))
        await resp.write(_sse({"type": "message_stop"}, "message_stop"))
        return resp

    async def set_mode(request: web.Request) -> web.Response:
        state["mode"] = await request.json()
        return web.json_response(state["mode"])

    async def get_log(_: web.Request) -> web.Response:
        return web.json_response(state["log"])

    async def get_disconnects(_: web.Request) -> web.Response:
        return web.json_response(state["disconnects"])

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", openai)
    app.router.add_post("/v1/messages", anthropic)
    app.router.add_post("/_mode", set_mode)
    app.router.add_get("/_log", get_log)
    app.router.add_get("/_disconnects", get_disconnects)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # handler_cancellation: a caller that hangs up cancels its handler at once (so a stream
    # paused between deltas sees it), as a real provider stops generating
    web.run_app(build_app(), host="127.0.0.1", port=args.port, print=None, access_log=None,
                handler_cancellation=True)


if __name__ == "__main__":
    main()
