"""``llmstack serve``: one foreground process serving a models.ini (or the demo stack)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from swapper.config import ConfigError
from swapper.events import EventBus, log_events
from swapper.http_app import SwapperApp
from swapper.manager import Manager
from swapper.server import configure_logging, run

from .app import LLMStackApp, Loaded
from .channels import Channel, for_channel, read_marker, resolve_serve, write_marker
from .config import ModelsIniError, Stack, load_stack
from .demo import BANNER, demo_files, demo_stack
from .hosted import litellm_installed
from .llama_server import cache_dir, find_llama_server, missing_server_message
from .project import Project, find_project
from .routing import RoutingTable
from .stack_config import build_swapper_config, local_files

API_KEYS_ENV = "LLMSTACK_API_KEYS"


def _loader(read: Callable[[], Stack], files: Callable[[Stack], dict], server: str,
            log_dir: Path) -> Callable[[], Loaded]:
    keys = tuple(k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip())

    def load() -> Loaded:
        stack = read()
        config = replace(build_swapper_config(stack, server, files(stack), str(log_dir)), api_keys=keys)
        return Loaded(stack, routing_table(stack), config)
    return load


def routing_table(stack: Stack) -> RoutingTable:
    """The ladder, without the ultra rung when it is hosted and litellm is not installed."""
    table = RoutingTable.from_stack(stack)
    ultra = stack.tier(table.ultra.name) if table.ultra else None
    if ultra is not None and ultra.backend == "litellm" and not litellm_installed():
        logging.getLogger("llmstack").warning(
            "tier %s is hosted but litellm is not installed: auto routing skips it", ultra.name)
        table = replace(table, ultra=None)
    return table


def serve(host: str | None, port: int | None, models_ini: tuple[Path, bool], demo: bool,
          log_level: str, channel_flag: str | None = None, log_dir: Path | None = None) -> int:
    """Run until Ctrl-C / SIGTERM; returns the exit code.

    ``log_dir``: the process logs to ``<log_dir>/llmstack.log`` and each tier to
    ``<log_dir>/<tier>.log`` (both rotated) instead of stderr and the cache.
    """
    path, named = models_ini
    if named and not demo and not path.exists():
        print(f"[!] models.ini not found: {path}", file=sys.stderr)
        return 2
    use_demo = demo or not path.exists()
    project = find_project()
    # the project's pinned channel applies to its own models.ini, not to a named one or --demo
    resolved = resolve_serve(None if named or demo else project, channel_flag)
    for note in resolved.notes:
        print(f"[!] {note}", file=sys.stderr)
    channel = resolved.channel
    try:
        stack = for_channel(demo_stack() if use_demo else load_stack(path), channel)
    except ModelsIniError as exc:
        print(f"[!] {path} has errors:\n{exc}", file=sys.stderr)
        return 2
    server = find_llama_server(stack.llama_server_bin)
    if server is None and any(t.backend == "gguf" for t in stack.tiers):
        print(f"[!] {missing_server_message()}", file=sys.stderr)
        return 1
    host = host or stack.host
    port = port or stack.router_port
    runtime = cache_dir() / "run" / f"port-{port}"
    read: Callable[[], Stack] = lambda: for_channel(demo_stack() if use_demo else load_stack(path),
                                                    channel)
    loader = _loader(read, demo_files if use_demo else local_files, server or "llama-server",
                     log_dir or runtime / "logs")
    configure_logging(log_level, log_dir / "llmstack.log" if log_dir else None)
    try:
        loaded = loader()
    except (ModelsIniError, ConfigError) as exc:
        print(f"[!] {exc}", file=sys.stderr)
        return 2
    bus = EventBus()
    bus.subscribe(log_events)
    manager = Manager(loaded.swapper, bus, runtime_dir=runtime)
    app = LLMStackApp(loader, None if use_demo else path.resolve(), SwapperApp(manager), loaded)
    if host not in ("127.0.0.1", "localhost", "::1") and not loaded.swapper.api_keys:
        print(f"[!] listening on {host} with no API key: anyone who can reach it can use it "
              f"(set {API_KEYS_ENV}=key1,key2 to require one)", file=sys.stderr)
    if use_demo:
        print(BANNER.format(host=host, port=port), file=sys.stderr)
    elif channel.name != "current":
        print(f"[*] serving the {channel.name} channel of {path}", file=sys.stderr)
    clear = record_active_channel(project, channel)
    app.shutdown_hooks.append(clear)
    try:
        run(app, host, port, log_level, own_logging=log_dir is not None)
    finally:
        clear()
    return 0


def record_active_channel(project: Project, channel: Channel) -> Callable[[], None]:
    """Write the served channel to the project's .llmstack/active-channel; returns the undo."""
    marker = project.active_channel
    if not project.state.is_dir():
        return lambda: None
    write_marker(marker, channel)

    def clear() -> None:
        if marker.exists() and read_marker(marker) == channel:
            marker.unlink(missing_ok=True)
    return clear
