"""An in-process stand-in for llama-server's slot API, for fault injection.

It speaks ``GET /props``, ``GET /slots``, ``POST /slots/{id}?action=save|restore|erase`` (files
in its ``save_dir``, ``bytes_per_token`` bytes a token plus a 16-byte header) and
``POST /v1/chat/completions`` (non-streamed, with ``timings``), in the shapes the real server
uses (notes/session-cache/FINDINGS.md). A prompt costs one token per 4 bytes of its messages'
JSON; a slot reuses what it holds as if the prompt extended it. Faults: ``restore_works=False``
answers a restore with success and restores nothing (llama.cpp issue 26676); ``save_delay``
holds every save answer that long; ``wrong_slot`` echoes another slot id.

Also a child process for the swapper (``cmd``), answering ``/health`` too::

    python slot_standin.py --port PORT -m MODEL [--slot-save-path DIR] [-np N] [--restore-broken]

(other llama-server flags are accepted and ignored).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web

HEADER = 16


class SlotStandIn:
    def __init__(self, save_dir: Path | None, slots: int = 1, n_ctx: int = 4096,
                 bytes_per_token: int = 100, restore_works: bool = True, save_delay: float = 0.0,
                 wrong_slot: bool = False) -> None:
        self.save_dir, self.n_ctx, self.bytes_per_token = save_dir, n_ctx, bytes_per_token
        self.restore_works, self.save_delay, self.wrong_slot = restore_works, save_delay, wrong_slot
        self.held: list[int | None] = [None] * slots  # None: no task since the start
        self.cells: list[int] = [0] * slots  # what a request can reuse
        self.calls: list[tuple[str, int, str | None]] = []
        self.chats: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/props", self._props)
        app.router.add_get("/slots", self._slots)
        app.router.add_post("/slots/{id}", self._action)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)  # a held save is cut short
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _props(self, _: web.Request) -> web.Response:
        return web.json_response({"total_slots": len(self.held), "model_path": "/stand-in.gguf",
                                  "default_generation_settings": {"n_ctx": self.n_ctx},
                                  "modalities": {"vision": False, "audio": False}})

    async def _slots(self, _: web.Request) -> web.Response:
        rows = []
        for slot, held in enumerate(self.held):
            row: dict[str, Any] = {"id": slot, "n_ctx": self.n_ctx, "is_processing": False}
            if held is not None:
                row["n_prompt_tokens"] = held
            rows.append(row)
        return web.json_response(rows)

    async def _action(self, request: web.Request) -> web.Response:
        slot, action = int(request.match_info["id"]) % len(self.held), request.query.get("action")
        body = await request.json()
        filename = body.get("filename")
        self.calls.append((str(action), slot, filename))
        echo = slot + 1 if self.wrong_slot else slot
        assert self.save_dir is not None
        if action == "save":
            await asyncio.sleep(self.save_delay)
            tokens = self.cells[slot]
            padding = b"\0" * (HEADER - 8 + tokens * self.bytes_per_token)
            data = b"ggsq" + tokens.to_bytes(4, "little") + padding
            (self.save_dir / filename).write_bytes(data)
            return web.json_response({"id_slot": echo, "filename": filename, "n_saved": tokens,
                                      "n_written": len(data), "timings": {"save_ms": 1.0}})
        if action == "restore":
            try:
                data = (self.save_dir / filename).read_bytes()
            except OSError:
                self.cells[slot] = 0
                return web.json_response({"error": {"code": 400, "type": "invalid_request_error",
                                                    "message": "Unable to restore slot"}}, status=400)
            tokens = int.from_bytes(data[4:8], "little")
            self.cells[slot] = tokens if self.restore_works else 0
            return web.json_response({"id_slot": echo, "filename": filename, "n_restored": tokens,
                                      "n_read": len(data), "timings": {"restore_ms": 1.0}})
        if action == "erase":
            erased, self.cells[slot] = self.cells[slot], 0
            return web.json_response({"id_slot": echo, "n_erased": erased})
        return web.json_response({"error": {"code": 400, "message": "Invalid action"}}, status=400)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.chats.append(body)
        slot = body.get("id_slot", 0) % len(self.held)
        prompt = len(json.dumps(body["messages"])) // 4
        cache_n = min(self.cells[slot], prompt - 1)
        generated = int(body.get("max_tokens", 4))
        self.cells[slot] = self.held[slot] = prompt + generated - 1
        return web.json_response({
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "tok " * generated}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": generated},
            "timings": {"cache_n": cache_n, "prompt_n": prompt - cache_n}})


async def _serve(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-m", dest="model", required=True)
    parser.add_argument("--slot-save-path", type=Path, default=None)
    parser.add_argument("-np", dest="slots", type=int, default=1)
    parser.add_argument("--restore-broken", action="store_true")
    args, _ = parser.parse_known_args(argv)
    standin = SlotStandIn(args.slot_save_path, slots=args.slots,
                          restore_works=not args.restore_broken)
    await standin.start(args.port)
    print(f"slot stand-in on {standin.base_url}, saving to {args.slot_save_path}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    asyncio.run(_serve(sys.argv[1:]))
