"""The command line of the lifecycle and shell verbs.

start, stop, restart, reload, status, top, logs, activate.

Only argparse is imported here (``--help`` stays fast); each verb imports its module
when it runs. Failures raise ``UserError``: one ``[!]`` line and a non-zero status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

SHELL_CHOICES = ("bash", "zsh", "fish", "powershell", "pwsh")


def _start_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detach", "-d", action="store_true",
                        help="run in the background; return once it answers")
    parser.add_argument("--host", help="bind address (default: models.ini [DEFAULT] host)")
    parser.add_argument("--port", type=int, help="port (default: models.ini [DEFAULT] router_port)")
    parser.add_argument("--demo", action="store_true", help="serve the built-in demo stack")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for it to answer (default: 180)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])


def register(verbs: Any) -> None:
    """Add the verbs to ``llmstack``'s subparsers."""
    start = verbs.add_parser(
        "start", help="start the project's stack (--detach: in the background)",
        description="Serve this project's .llmstack/models.ini (the demo stack when there is "
                    "none). With --detach it runs in the background, logs to .llmstack/logs/ "
                    "and this returns once it answers (and is the server it started); a no-op "
                    "when it already runs. A port held by another program, or another "
                    "project's stack, is refused, naming it.")
    _start_options(start)
    verbs.add_parser(
        "stop", help="stop what this project started",
        description="SIGTERM the stack this project's pid record names (after checking its "
                    "pid, create time and command line), SIGKILL after 5 s. Nothing else is "
                    "touched; a stale record is reported and removed.")
    restart = verbs.add_parser("restart", help="stop, then start",
                               description="llmstack stop, then llmstack start with these options.")
    _start_options(restart)
    status = verbs.add_parser(
        "status", help="channel, URL, tiers, resident models and ports",
        description="What the project's stack runs, from its own /running and /v1/models. "
                    "Exit status: 0 running, 3 stopped, 1 not answering.")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    top = verbs.add_parser(
        "top", help="live view: models, states, memory, queue, last decisions",
        description="Redraw the running stack's state (GET /api/state, the facts /ui shows) "
                    "every --interval seconds until q or Ctrl-C.")
    top.add_argument("--url", help="the stack's URL (default: this project's running stack)")
    top.add_argument("--interval", type=float, default=0.5, help="seconds between frames (0.5)")
    logs = verbs.add_parser(
        "logs", help="the stack's log, or one tier's",
        description="Print the last lines of .llmstack/logs/llmstack.log (or TIER's log); "
                    "-f follows it (a tier live from the running stack's /logs/stream/TIER).")
    logs.add_argument("tier", nargs="?", help="a tier name (default: the stack's own log)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines of history (default 50)")
    reload = verbs.add_parser(
        "reload", help='re-export this shell\'s env: eval "$(llmstack reload)"',
        description='For eval "$(llmstack reload)": prints shell code that re-activates this '
                    "project in the calling shell (its env, prompt and hook), and asks the "
                    "running stack, if any, to re-read models.ini (POST /reload; messages on "
                    "stderr). Printed to a terminal, it only reloads the stack.")
    reload.add_argument("--shell", choices=SHELL_CHOICES,
                        help="shell family (default: from $SHELL)")
    activate = verbs.add_parser(
        "activate", help='shell hook: eval "$(llmstack activate bash|zsh|fish|powershell)"',
        description="Print a hook that wires every project you cd into: exports OPENCODE_CONFIG, "
                    "LLMSTACK_WORK_DIR, LLMSTACK_CHANNEL, LLMSTACK_MODELS_INI, LLMSTACK_BASE_URL "
                    "…, prefixes the prompt with [llmstack:<project>], and restores everything "
                    "on leaving. bash/zsh: eval \"$(llmstack activate zsh)\" in ~/.zshrc; fish: "
                    "llmstack activate fish | source; PowerShell: llmstack activate powershell "
                    "| Out-String | Invoke-Expression.")
    activate.add_argument("shell", choices=SHELL_CHOICES)
    activate.add_argument("--env", type=Path, metavar="ROOT", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`VERBS` (a ``UserError`` it raises is reported by ``cli.main``)."""
    return _HANDLERS[args.verb](args)


def _start(args: argparse.Namespace) -> int:
    from ..project.daemon import start_detached, start_foreground
    from ..project.paths import find_project

    if args.detach:
        return start_detached(find_project().root, host=args.host, port=args.port,
                              demo=args.demo, timeout=args.timeout)
    return start_foreground(find_project().root, host=args.host, port=args.port, demo=args.demo,
                            log_level=args.log_level)


def _stop(args: argparse.Namespace) -> int:
    from ..project.daemon import stop
    from ..project.paths import find_project

    return stop(find_project().root)


def _restart(args: argparse.Namespace) -> int:
    return _stop(args) or _start(args)


def _status(args: argparse.Namespace) -> int:
    from ..project.paths import find_project
    from .status import status

    return status(find_project().root, args.json)


def _top(args: argparse.Namespace) -> int:
    from ..project.paths import find_project
    from .top import stack_url, top

    return top(args.url or stack_url(find_project().root), args.interval)


def _logs(args: argparse.Namespace) -> int:
    from ..project.daemon import logs
    from ..project.paths import find_project

    try:
        return logs(find_project().root, args.tier, args.follow, args.lines)
    except KeyboardInterrupt:
        return 0


def _activate(args: argparse.Namespace) -> int:
    from .shell import activate

    sys.stdout.write(activate(args.shell, args.env))
    return 0


def _reload(args: argparse.Namespace) -> int:
    from ..project.daemon import reload_stack
    from .shell import reload_code

    root, code = reload_code(args.shell)
    if sys.stdout.isatty():
        print('[=] to refresh this shell too: eval "$(llmstack reload)"', file=sys.stderr)
    else:
        sys.stdout.write(code)
    return reload_stack(root)


_HANDLERS = {"start": _start, "stop": _stop, "restart": _restart, "status": _status,
             "top": _top, "logs": _logs, "activate": _activate, "reload": _reload}
VERBS = frozenset(_HANDLERS)
