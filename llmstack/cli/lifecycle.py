"""The stack's lifecycle verbs: serve, start, stop, restart and logs.

Only argparse is imported here (``--help`` stays fast); the implementation
(:mod:`llmstack.project.serve`, :mod:`llmstack.project.daemon`) is imported when a verb runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config.address import DEFAULT_HOST, DEFAULT_PORT
from ..project.paths import DEFAULT_MODELS_INI
from ..settings import Settings
from .registry import Command

LOG_LEVELS = ("debug", "info", "warning", "error")


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help=f"bind address (default: [DEFAULT] host, else {DEFAULT_HOST})")
    parser.add_argument("--port", type=int,
                        help=f"port (default: [DEFAULT] router_port, else {DEFAULT_PORT})")
    parser.add_argument("--models-ini", type=Path,
                        help="models.ini to serve (default: $LLMSTACK_MODELS_INI, else "
                             f"./{DEFAULT_MODELS_INI})")
    parser.add_argument("--demo", action="store_true", help="serve the built-in demo stack")
    parser.add_argument("--channel", choices=["current", "next"],
                        help="current files or the queued upgrades (default: "
                             "$LLMSTACK_USE_NEXT=1 means next, else the channel pinned by "
                             "`llmstack install`)")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.add_argument("--log-dir", type=Path,
                        help="log to DIR/llmstack.log and DIR/<tier>.log, rotated (default: stderr)")
    parser.add_argument("--allow-unauthenticated-network", action="store_true",
                        help="allow a non-loopback --host with no LLMSTACK_API_KEYS (anyone on "
                             "the network can then use and stop the models)")


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from ..project.paths import find_project
    from ..project.serve import ServeOptions, serve

    options = ServeOptions(host=args.host, port=args.port, models_ini=args.models_ini,
                           demo=args.demo, channel=args.channel, log_level=args.log_level,
                           log_dir=args.log_dir,
                           allow_unauthenticated_network=args.allow_unauthenticated_network)
    return serve(options, find_project(settings), settings)


def _start_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detach", "-d", action="store_true",
                        help="run in the background; return once it answers")
    parser.add_argument("--host", help="bind address (default: models.ini [DEFAULT] host)")
    parser.add_argument("--port", type=int, help="port (default: models.ini [DEFAULT] router_port)")
    parser.add_argument("--models-ini", type=Path,
                        help="models.ini to serve (default: $LLMSTACK_MODELS_INI, else "
                             f"./{DEFAULT_MODELS_INI}; the demo stack when there is none)")
    parser.add_argument("--demo", action="store_true", help="serve the built-in demo stack")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for it to answer (default: 180)")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)


def _start(args: argparse.Namespace, settings: Settings) -> int:
    from ..project.daemon import start_detached, start_foreground
    from ..project.paths import find_project

    project = find_project(settings)
    if args.detach:
        return start_detached(project, settings, host=args.host, port=args.port, demo=args.demo,
                              models_ini=args.models_ini, timeout=args.timeout)
    return start_foreground(project, settings, host=args.host, port=args.port, demo=args.demo,
                            models_ini=args.models_ini, log_level=args.log_level)


def _stop(args: argparse.Namespace, settings: Settings) -> int:
    from ..project.daemon import stop
    from ..project.paths import find_project

    return stop(find_project(settings).root, settings=settings)


def _restart(args: argparse.Namespace, settings: Settings) -> int:
    return _stop(args, settings) or _start(args, settings)


def _logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tier", nargs="?", help="a tier name (default: the stack's own log)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.add_argument("-n", "--lines", type=int, default=50, help="lines of history (default 50)")


def _logs(args: argparse.Namespace, settings: Settings) -> int:
    from ..project.daemon import logs
    from ..project.paths import find_project

    try:
        return logs(find_project(settings).root, args.tier, args.follow, args.lines,
                    settings.auth_headers)
    except KeyboardInterrupt:
        return 0


COMMANDS = {
    "serve": Command(_serve, "Serve models.ini's tiers on one port; with no models.ini, the "
                             "built-in demo stack. One stack per port: a second one is refused, "
                             "naming the one that holds it.", _serve_arguments),
    "start": Command(_start, "Serve this project's .llmstack/models.ini (the demo stack when "
                             "there is none). With --detach it runs in the background, logs to "
                             ".llmstack/logs/ and this returns once it answers (and is the server "
                             "it started); a no-op when it already runs, an error when it runs "
                             "on another --host/--port or models.ini than named (llmstack "
                             "restart moves it). A port held by another program, or another "
                             "project's stack, is refused, naming it.", _start_arguments),
    "stop": Command(_stop, "SIGTERM the stack this project's pid record names (after checking "
                           "its pid, create time and command line); it ends its log and event "
                           "streams, gives requests in flight 5 s and saves its models' sessions "
                           "(30 s at most), then stops its models. SIGKILL only if it still runs "
                           "50 s later. Nothing else is touched; a stale record is reported and "
                           "removed."),
    "restart": Command(_restart, "llmstack stop, then llmstack start with these options.",
                       _start_arguments),
    "logs": Command(_logs, "Print the last lines of .llmstack/logs/llmstack.log (or TIER's "
                           "log); -f follows it (a tier live from the running stack's "
                           "/logs/stream/TIER).", _logs_arguments),
}
