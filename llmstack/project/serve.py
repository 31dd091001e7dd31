"""``llmstack serve``: one foreground process serving a models.ini (or the demo stack)."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from swapper.config import ConfigError
from swapper.events import EventBus, log_events
from swapper.front_door import FrontDoor, exposure_check, parse_origins
from swapper.http_app import SwapperApp
from swapper.manager import Manager
from swapper.reaper import RuntimeDirBusy
from swapper.server import ListenError, configure_logging, listen, run

from ..config.address import url_for
from ..config.demo import banner, demo_stack
from ..config.ini import load_stack
from ..config.litellm_config import litellm_config_path, read_user_params
from ..config.schema import Stack
from ..errors import UserError
from ..models.demo import demo_files, demo_model
from ..models.hf_cache import HubCache
from ..models.llama_server import find_llama_server, missing_server_message
from ..serving.app import LLMStackApp, Loaded
from ..serving.hosted import HostedTiers, litellm_installed
from ..serving.routing import LADDER, RoutingTable
from ..serving.swapper_config import budgeted_config
from ..settings import API_KEYS, Settings, prepare_for_litellm
from .channels import Channel, for_channel, read_marker, resolve_serve, write_marker
from .paths import Project
from .pidrecord import port_holder


@dataclass(frozen=True)
class Builder:
    """Turns one parsed models.ini (a Stack) into a generation of configuration."""

    files: Callable[[Stack], Mapping[str, Path | None]]
    """Each GGUF tier's file on this machine (None: not downloaded)."""
    server: str
    hub: HubCache
    log_dir: Path
    litellm_config: Path | None
    settings: Settings
    owner: str
    """The models.ini served (or the demo stack), naming its tiers' sessions among others'."""

    @property
    def session_dir(self) -> Path:
        """Saved sessions: one directory for every port, so a restart (on any port) finds them."""
        return self.settings.cache_dir / "sessions"

    def __call__(self, stack: Stack) -> Loaded:
        """A generation for ``stack``; a ModelsIniError when its tiers cannot fit the memory
        budget (models.ini's, else this machine's, detected again at each reload)."""
        files = self.files(stack)
        config = budgeted_config(stack, self.settings, self.server, files, self.hub,
                                 str(self.log_dir))
        config = replace(config, api_keys=self.settings.api_keys,
                         private_env=self.settings.private_env,
                         session_cache=replace(config.session_cache, dir=str(self.session_dir),
                                               owner=self.owner))
        hosted = any(t.backend == "litellm" for t in stack.tiers)
        user = read_user_params(self.litellm_config, self.settings.variables) if hosted else {}
        return Loaded(stack, routing_table(stack, files), config,
                      HostedTiers.build(stack, user, self.settings.backends_api_key))


def routing_table(stack: Stack, files: Mapping[str, Path | None]) -> RoutingTable:
    """The ladder, less the rung tiers that cannot serve now: a GGUF tier whose file is not
    on this machine (``files``), a hosted tier when litellm is not installed."""
    table = RoutingTable.from_stack(stack)
    unavailable: dict[str, str] = {}
    for role, rung in zip(LADDER, table.rungs, strict=True):
        tier = stack.tier(rung.name) if rung else None
        if tier is None:
            continue
        if tier.backend == "gguf" and files.get(tier.name) is None:
            unavailable[role] = f"{tier.name} not downloaded"
        elif tier.backend != "gguf" and not litellm_installed():
            unavailable[role] = f"{tier.name} needs litellm"
    table = table.without(unavailable)
    for why in dict(table.unavailable).values():
        logging.getLogger("llmstack").warning("auto routing skips tier %s", why)
    return table


@dataclass(frozen=True)
class ServeOptions:
    """What ``llmstack serve`` (or ``start`` in the foreground) was asked for."""

    host: str | None = None
    """Bind address; None: models.ini's [DEFAULT] host."""
    port: int | None = None
    """None: models.ini's [DEFAULT] router_port."""
    models_ini: Path | None = None
    """A models.ini the user named (it must exist); None: the project's, else the demo stack."""
    demo: bool = False
    channel: str | None = None
    """``current`` or ``next``; None: $LLMSTACK_USE_NEXT, else the project's pinned channel."""
    log_level: str = "info"
    log_dir: Path | None = None
    """Log to ``<log_dir>/llmstack.log`` and ``<log_dir>/<tier>.log`` (rotated) instead of
    stderr and the cache."""
    allow_unauthenticated_network: bool = False


def serve(options: ServeOptions, project: Project, settings: Settings) -> int:
    """Run until Ctrl-C / SIGTERM; returns the exit code. What stops it from starting is a
    :class:`UserError` (a missing or bad models.ini, no llama-server, a port in use, ...)."""
    path = project.models_ini_to_serve(options.models_ini, options.demo)
    named = options.models_ini is not None or project.models_ini_from_env
    # the project's pinned channel applies to its own models.ini, not to a named one or --demo
    resolved = resolve_serve(None if named or options.demo else project, options.channel, settings)
    for note in resolved.notes:
        print(f"[!] {note}", file=sys.stderr)
    channel = resolved.channel

    def read() -> Stack:
        stack = demo_stack() if path is None else load_stack(path, settings.variables)
        return for_channel(stack, channel)

    stack = read()
    server = find_llama_server(settings, stack.llama_server_bin)
    if server is None and any(t.backend == "gguf" for t in stack.tiers):
        raise UserError(missing_server_message(settings))
    host = options.host or stack.host
    port = options.port or stack.router_port
    runtime = settings.cache_dir / "run" / f"port-{port}"
    hub = HubCache(settings.hub_cache)
    model = demo_model(settings.cache_dir, _say) if path is None else None
    build = Builder(partial(demo_files, cache=settings.cache_dir, model=model) if path is None
                    else hub.local_files, server or "llama-server", hub,
                    options.log_dir or runtime / "logs",
                    litellm_config_path(settings, None if path is None else project.state),
                    settings, "demo stack" if path is None else str(path.resolve()))
    configure_logging(options.log_level, options.log_dir / "llmstack.log" if options.log_dir else None)
    prepare_for_litellm()
    try:
        loaded = build(stack)  # the stack read above: models.ini is parsed once at start-up
    except ConfigError as exc:
        raise UserError(str(exc), 2) from None
    _check_exposure(host, loaded, options.allow_unauthenticated_network)
    bus = EventBus()
    bus.subscribe(log_events)
    manager, sock = _claim(loaded, bus, runtime, host, port)
    front = FrontDoor(host, parse_origins(settings.cors_origins))
    app = LLMStackApp(lambda: build(read()), None if path is None else path.resolve(),
                      SwapperApp(manager, front=front), loaded)
    print(banner(host, port, real=model is not None) if path is None
          else project_banner(path, channel, stack, url_for(host, port)), file=sys.stderr)
    clear = record_active_channel(project, channel)
    app.shutdown_hooks.append(clear)
    try:
        run(app, sock, options.log_level, own_logging=options.log_dir is not None,
            begin_shutdown=app.swapper.begin_shutdown)
    finally:
        clear()
    return 0


def project_banner(path: Path, channel: Channel, stack: Stack, url: str) -> str:
    """What ``serve`` of a models.ini prints first (the demo stack has config.demo's banner)."""
    which = "" if channel.name == "current" else f"the {channel.name} channel of "
    return (f"llmstack is serving {which}{path}: {', '.join(t.name for t in stack.tiers)}\n"
            f"  API: {url}/v1 (model \"auto\" picks a tier)  status page: {url}/ui")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check_exposure(host: str, loaded: Loaded, allowed: bool) -> None:
    """A non-loopback bind without API keys: a warning, or (unless ``allowed``) refused."""
    message, fatal = exposure_check(host, bool(loaded.swapper.api_keys), allowed)
    if not message:
        return
    message += f" ({API_KEYS}=key1,key2 sets keys)"
    if fatal:
        raise UserError(message, 2)
    print(f"[!] {message}", file=sys.stderr)


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
