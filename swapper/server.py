"""Runs an ASGI app on uvicorn with the fast parts (uvloop, httptools, no access log)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from typing import Any

import uvicorn

from .http_protocol import bounded_protocol


def configure_logging(level: str = "INFO") -> None:
    """Plain one-line logs on stderr; events arrive already formatted as JSON."""
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``:port`` (host defaults to 127.0.0.1)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--listen expects host:port, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


KEEP_ALIVE_TIMEOUT = 5
"""Seconds an idle keep-alive connection stays open."""


def run(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Serve ``app`` until SIGINT/SIGTERM; lifespan events start and stop the models."""
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", access_log=False,
                            loop="uvloop" if has_uvloop else "asyncio", http=bounded_protocol(),
                            log_level=log_level, timeout_graceful_shutdown=5,
                            timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
                            server_header=False, date_header=False)
    server = uvicorn.Server(config)
    if has_uvloop:
        import uvloop
        uvloop.run(server.serve())
    else:
        asyncio.run(server.serve())
