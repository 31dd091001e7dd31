"""``llmstack serve``: one foreground process serving a models.ini (or the demo stack)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from swapper.config import ConfigError
from swapper.events import EventBus, log_events
from swapper.front_door import FrontDoor, exposure_check, parse_origins
from swapper.http_app import SwapperApp
from swapper.manager import Manager
from swapper.reaper import RuntimeDirBusy
from swapper.server import ListenError, configure_logging, listen, run

from .app import LLMStackApp, Loaded
from .channels import Channel, for_channel, read_marker, resolve_serve, write_marker
from .config import ModelsIniError, Stack, load_stack
from .demo import BANNER, demo_files, demo_stack
from .hosted import HostedTiers, litellm_installed
from .litellm_config import litellm_config_path, read_user_params
from .llama_server import cache_dir, find_llama_server, missing_server_message
from .project import Project, UserError, find_project
from .routing import RoutingTable
from .hf_cache import local_files
from .stack_config import build_swapper_config

API_KEYS_ENV = "LLMSTACK_API_KEYS"
CORS_ORIGINS_ENV = "LLMSTACK_CORS_ORIGINS"


def _builder(files: Callable[[Stack], Mapping[str, Path | None]], server: str, log_dir: Path,
             litellm_config: Path | None = None) -> Callable[[Stack], Loaded]:
    """Turns one parsed models.ini (a Stack) into a generation of configuration."""
    keys = tuple(k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip())

    def load(stack: Stack) -> Loaded:
        config = replace(build_swapper_config(stack, server, files(stack), str(log_dir)),
                         api_keys=keys, private_env=frozenset({API_KEYS_ENV}))
        hosted = any(t.backend == "litellm" for t in stack.tiers)
        user = read_user_params(litellm_config) if hosted else {}
        return Loaded(stack, routing_table(stack), config, HostedTiers.build(stack, user))
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
          log_level: str, channel_flag: str | None = None, log_dir: Path | None = None,
          allow_unauthenticated_network: bool = False) -> int:
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
    read: Callable[[], Stack] = lambda: for_channel(demo_stack() if use_demo else load_stack(path),
                                                    channel)
    try:
        stack = read()
    except ModelsIniError as exc:
        one = len(exc.errors) == 1
        print(f"[!] {exc}" if one else f"[!] {path} has errors:\n{exc}", file=sys.stderr)
        return 2
    server = find_llama_server(stack.llama_server_bin)
    if server is None and any(t.backend == "gguf" for t in stack.tiers):
        print(f"[!] {missing_server_message()}", file=sys.stderr)
        return 1
    host = host or stack.host
    port = port or stack.router_port
    runtime = cache_dir() / "run" / f"port-{port}"
    build = _builder(demo_files if use_demo else local_files, server or "llama-server",
                     log_dir or runtime / "logs", litellm_config_path(None if use_demo else project.state))
    configure_logging(log_level, log_dir / "llmstack.log" if log_dir else None)
    try:
        loaded = build(stack)  # the stack read above: models.ini is parsed once at start-up
    except (ModelsIniError, ConfigError) as exc:
        print(f"[!] {exc}", file=sys.stderr)
        return 2
    message, fatal = exposure_check(host, bool(loaded.swapper.api_keys),
                                    allow_unauthenticated_network)
    if message:
        print(f"[!] {message} ({API_KEYS_ENV}=key1,key2 sets keys)", file=sys.stderr)
        if fatal:
            return 2
    bus = EventBus()
    bus.subscribe(log_events)
    try:
        manager, sock = _claim(loaded, bus, runtime, host, port)
    except UserError as exc:
        print(f"[!] {exc}", file=sys.stderr)
        return 1
    front = FrontDoor(host, parse_origins(os.environ.get(CORS_ORIGINS_ENV, "")))
    app = LLMStackApp(lambda: build(read()), None if use_demo else path.resolve(),
                      SwapperApp(manager, front=front), loaded)
    if use_demo:
        print(BANNER.format(host=host, port=port), file=sys.stderr)
    elif channel.name != "current":
        print(f"[*] serving the {channel.name} channel of {path}", file=sys.stderr)
    clear = record_active_channel(project, channel)
    app.shutdown_hooks.append(clear)
    try:
        run(app, sock, log_level, own_logging=log_dir is not None)
    finally:
        clear()
    return 0


def _claim(loaded: Loaded, bus: EventBus, runtime: Path, host: str,
           port: int) -> tuple[Manager, socket.socket]:
    """The port's runtime directory (its children's records) and the listening socket,
    both taken before anything starts: a second stack on the port, or a port held by
    another program, is one :class:`UserError` naming the holder, and touches nothing."""
    try:
        manager = Manager(loaded.swapper, bus, runtime_dir=runtime)
    except RuntimeDirBusy as exc:
        raise UserError(f"another llmstack serves port {port}: {exc} (llmstack stop in its "
                        "project, or --port N)") from None
    except OSError as exc:
        raise UserError(f"cannot use the runtime directory {runtime}: {exc}") from None
    try:
        return manager, listen(host, port)
    except ListenError as exc:
        from .daemon import port_holder
        manager.release()
        raise UserError(f"{exc} (held by {port_holder(host, port) or 'nobody visible'})") from None


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
