"""A fast fake llama-server for fault injection and proxy benchmarks.

Speaks the parts of llama-server's HTTP API the swapper touches: /health
(503 "Loading model" for ``--load-ms``, then 200), and OpenAI chat completions,
streamed or not. Like llama-server it prints a "server is listening" line and
closes the connection after every stream. It logs "client disconnected" when a
stream's client goes away, so tests can see a disconnect reach the upstream.

    python tests/fake_upstream.py --port 8081 [--chunks 16] [--chunk-ms 0]
        [--load-ms 0] [--exit-at-start] [--ignore-term] [--chunks-from-max-tokens]
        [--log-lines 0]

``--chunks-from-max-tokens``: a streamed answer has as many content chunks as the
request's integer ``max_tokens`` (else ``--chunks``). ``--log-lines N``: each chat
request prints N log lines of about 1 KB (llama-server prints a few per request).

Unknown flags are ignored, so it can stand in for llama-server itself
(``LLMSTACK_LLAMA_SERVER`` pointing at a script that runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

from aiohttp import web


def chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    payload = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
               "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def build_app(args: argparse.Namespace) -> web.Application:
    ready_at = time.monotonic() + args.load_ms / 1000

    async def health(_: web.Request) -> web.Response:
        if time.monotonic() < ready_at:
            return web.json_response({"error": {"message": "Loading model", "type": "unavailable_error",
                                                "code": 503}}, status=503)
        return web.json_response({"status": "ok"})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if args.log_lines:
            print("".join(f"slot {i}: request {id(request):x} processed {'.' * 1000}\n"
                          for i in range(args.log_lines)), end="", flush=True)
        model = body.get("model", args.model)
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "tok " * args.chunks}}],
                "usage": {"prompt_tokens": 8, "completion_tokens": args.chunks,
                          "total_tokens": 8 + args.chunks},
                "received": {k: v for k, v in body.items() if k != "messages"},
                "received_keys": [request.headers.get(h, "") for h in ("authorization",
                                                                        "x-api-key")]})
        asked = body.get("max_tokens")
        count = asked if args.chunks_from_max_tokens and isinstance(asked, int) else args.chunks
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Connection": "close"})
        await resp.prepare(request)
        try:
            await resp.write(chunk(model, {"role": "assistant", "content": None}))
            for _ in range(count):
                if args.chunk_ms:
                    await asyncio.sleep(args.chunk_ms / 1000)
                await resp.write(chunk(model, {"content": "tok "}))
            await resp.write(chunk(model, {}, "length"))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
                         "usage": {"prompt_tokens": 8, "completion_tokens": count}}
                await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            print(f"client disconnected at {time.time():.3f}", flush=True)
            raise
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", "--alias", dest="model", default="fake")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--chunk-ms", type=float, default=0.0)
    parser.add_argument("--load-ms", type=float, default=0.0)
    parser.add_argument("--exit-at-start", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--chunks-from-max-tokens", action="store_true")
    parser.add_argument("--log-lines", type=int, default=0)
    args, _ = parser.parse_known_args()  # accepts (and ignores) llama-server's other flags
    if args.exit_at_start:
        print("error: failed to load model 'fake.gguf': no such file", flush=True)
        sys.exit(3)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"main: server is listening on http://127.0.0.1:{args.port}", flush=True)
    web.run_app(build_app(args), host="127.0.0.1", port=args.port, print=None,
                handle_signals=not args.ignore_term, access_log=None)


if __name__ == "__main__":
    main()
