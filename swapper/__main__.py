"""``python -m swapper -c config.yaml [--listen 127.0.0.1:8080]``: the swapper on its own."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path

from .config import ConfigError
from .events import EventBus, log_events
from .front_door import ALLOW_NETWORK_FLAG, FrontDoor, exposure_check, parse_origins
from .http_app import SwapperApp
from .manager import Manager
from .reaper import RuntimeDirBusy
from .server import configure_logging, listen, parse_listen, run
from .yaml_config import load_yaml_config


def default_runtime_dir(config: Path) -> Path:
    """A directory of our own per config file, outside the user's tree."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(config.resolve()).encode()).hexdigest()[:16]
    return cache / "swapper" / digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swapper",
                                     description="Serve models on demand from a llama-swap style config.")
    parser.add_argument("-c", "--config", required=True, type=Path, help="llama-swap config.yaml")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port (default 127.0.0.1:8080)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--runtime-dir", type=Path, default=None,
                        help="where child pid records live, held by one server at a time "
                             "(default: one directory per config under "
                             "${XDG_CACHE_HOME:-~/.cache}/swapper)")
    parser.add_argument(ALLOW_NETWORK_FLAG, action="store_true",
                        help="allow a non-loopback --listen with no apiKeys (anyone on the "
                             "network can then use and stop the models)")
    parser.add_argument("--cors-origins", default="", metavar="ORIGINS",
                        help="comma-separated origins allowed cross-origin (browser) access, "
                             "* for any (default: none)")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load_yaml_config(args.config)
        host, port = parse_listen(args.listen)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    message, fatal = exposure_check(host, bool(config.api_keys), args.allow_unauthenticated_network)
    if message:
        print(f"{'error' if fatal else 'warning'}: {message}", file=sys.stderr)
        if fatal:
            return 2
    for warning in config.extra.get("unsupported", ()):
        logging.getLogger("swapper").warning("%s", warning)
    bus = EventBus()
    bus.subscribe(log_events)
    runtime = args.runtime_dir or default_runtime_dir(args.config)
    try:
        manager = Manager(config, bus, runtime_dir=runtime)
        sock = listen(host, port)
    except RuntimeDirBusy as exc:
        print(f"error: another swapper serves this config: {exc} (stop it, or pass "
              "--runtime-dir)", file=sys.stderr)
        return 1
    except OSError as exc:  # ListenError, or a runtime directory we cannot use
        print(f"error: {exc}", file=sys.stderr)
        return 1
    app = SwapperApp(manager, front=FrontDoor(host, parse_origins(args.cors_origins)))
    run(app, sock, args.log_level, begin_shutdown=app.begin_shutdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
