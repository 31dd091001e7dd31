"""Runs an ASGI app on uvicorn with the fast parts (uvloop, httptools, no access log)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import logging.handlers
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
import uvicorn.config

from .config import SHUTDOWN_GRACE
from .http_protocol import bounded_protocol

LOG_FILE_BYTES = 5 * 1024 * 1024
LOG_FILE_BACKUPS = 3


def configure_logging(level: str = "INFO", path: Path | None = None) -> None:
    """Plain one-line logs on stderr, or in ``path`` rotated at 5 MB (3 backups kept)."""
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_FILE_BYTES,
                                                       backupCount=LOG_FILE_BACKUPS)
    logging.basicConfig(handlers=[handler], level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``:port`` (host defaults to 127.0.0.1)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--listen expects host:port, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


KEEP_ALIVE_TIMEOUT = 5
"""Seconds an idle keep-alive connection stays open."""
BACKLOG = 2048


class ListenError(OSError):
    """The address cannot be listened on; ``str()`` is one line."""


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (ListenError when that fails, e.g. in use).

    Bound and listening before the server starts anything (its models, its reaper),
    so a port held by another program fails first and leaves nothing behind.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``begin_shutdown`` as shutdown starts: uvicorn then waits
    (up to :data:`SHUTDOWN_GRACE`) for every open connection before the lifespan's shutdown
    runs, so streams that never end by themselves must end here."""

    def __init__(self, config: uvicorn.Config, begin_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._begin_shutdown = begin_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._begin_shutdown()
        await super().shutdown(sockets)


def run(app: Any, sock: socket.socket, log_level: str = "info", own_logging: bool = False,
        begin_shutdown: Callable[[], None] = lambda: None) -> None:
    """Serve ``app`` on ``sock`` (from :func:`listen`) until SIGINT/SIGTERM; lifespan
    events start and stop the models.

    ``own_logging``: uvicorn's loggers go to the root handlers set by
    :func:`configure_logging` instead of uvicorn's own stderr handlers. ``begin_shutdown``
    is called once the signal came, before open connections are waited for
    (:meth:`swapper.http_app.SwapperApp.begin_shutdown`).
    """
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", access_log=False,
                            backlog=BACKLOG, loop="uvloop" if has_uvloop else "asyncio",
                            http=bounded_protocol(),
                            log_level=log_level, timeout_graceful_shutdown=SHUTDOWN_GRACE,
                            log_config=None if own_logging else uvicorn.config.LOGGING_CONFIG,
                            timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
                            server_header=False, date_header=False,
                            # nothing reads the client address, and X-Forwarded-* from a
                            # local client would only be trusted to change it: one layer less
                            proxy_headers=False)
    server = _Server(config, begin_shutdown)
    if has_uvloop:
        import uvloop
        uvloop.run(server.serve([sock]))
    else:
        asyncio.run(server.serve([sock]))
