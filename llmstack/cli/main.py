"""``llmstack``: the command line.

It reads the verb's row in :mod:`llmstack.cli.registry`, imports that verb's module
only (``--help`` imports none), reads the environment once (:class:`Settings`) and
runs the verb. Every problem the user can fix reaches the user one way: a
:class:`UserError` is printed here as ``[!] <message>`` and its code is the exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__
from ..errors import UserError
from . import registry


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"[!] {self.prog}: {message} (see `{self.prog} --help`)\n")


def _parser(chosen: registry.Verb | None) -> argparse.ArgumentParser:
    """Every verb with its summary; the arguments of ``chosen`` only."""
    parser = _Parser(
        prog="llmstack",
        description="A local multi-tier LLM stack in one process: on-demand llama-server "
                    "children, a residency solver and an auto router.")
    parser.add_argument("-V", "--version", action="version", version=f"llmstack {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="<command>")
    for verb in registry.VERBS:
        if verb is not chosen:
            verbs.add_parser(verb.name, aliases=list(verb.aliases), help=verb.summary)
            continue
        command = verb.command()
        sub = verbs.add_parser(verb.name, aliases=list(verb.aliases), help=verb.summary,
                               description=command.description)
        command.arguments(sub)
    return parser


def _verb_word(argv: Sequence[str]) -> str | None:
    """The first word that is not an option (``llmstack`` itself takes no option values)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = registry.find(_verb_word(argv))
    parser = _parser(verb)
    args = parser.parse_args(argv)
    if verb is None:
        parser.print_help()
        return 0
    from ..settings import Settings

    try:
        code = verb.command().run(args, Settings.read())
        sys.stdout.flush()  # inside the handler: a reader that left is not a traceback
        return code
    except KeyboardInterrupt:
        print("[!] interrupted", file=sys.stderr)
        return 130
    except UserError as exc:  # a user-facing error is one line, never a traceback
        print(f"[!] {exc.report()}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `llmstack status --json | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        print(f"[!] {exc}", file=sys.stderr)
        return 1
