"""Every verb of ``llmstack``: its name, aliases, one-line summary, and the module that runs it.

The table is all ``llmstack --help`` needs; a verb's module (``llmstack.cli.<group>``) is
imported only when that verb runs (or shows its own help), so the command line stays fast
however heavy a verb is. A group module defines ``COMMANDS``: each verb's
:class:`Command` (how it runs, its description and its arguments). Adding a verb is one
row here and one entry in its group's ``COMMANDS``. (Named tuples, not dataclasses: importing
``dataclasses`` alone would cost ``--help`` a few milliseconds.)
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ..settings import Settings


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """For a verb that takes none."""


class Command(NamedTuple):
    """How one verb runs: ``run(args, settings)`` returns the exit status; a problem the user
    can fix is a :class:`~llmstack.errors.UserError` (one ``[!]`` line, its exit status)."""

    run: Callable[[argparse.Namespace, Settings], int]
    description: str | None = None
    """What ``llmstack <verb> --help`` says under the usage line."""
    arguments: Callable[[argparse.ArgumentParser], None] = no_arguments


class Verb(NamedTuple):
    """One row of the table."""

    name: str
    group: str
    """The module under ``llmstack.cli`` whose ``COMMANDS`` holds it."""
    summary: str
    aliases: tuple[str, ...] = ()

    def command(self) -> Command:
        module = importlib.import_module(f"llmstack.cli.{self.group}")
        command: Command = module.COMMANDS[self.name]
        return command


VERBS: tuple[Verb, ...] = (
    Verb("serve", "lifecycle", "run the stack in the foreground (Ctrl-C stops all it started)"),
    Verb("install-server", "models", "build llama-server once into the cache; fetch the demo's model"),
    Verb("template", "models", "print the bundled models.ini template"),
    Verb("init", "install", "seed .llmstack/models.ini from the bundled template"),
    Verb("configure", "install", "render .llmstack/opencode.json and AGENTS.md from models.ini"),
    Verb("install", "install", "pin a channel, seed models.ini and configure (init + configure)"),
    Verb("setup", "install", "init + download + configure + start, on a fresh project"),
    Verb("add", "models", "add a tier by model name: add <tier> <repo>[:<quant>]"),
    Verb("download", "models", "download the tiers' GGUFs into the HF cache", ("download-models",)),
    Verb("check", "models", "report each tier: present, missing or drifted", ("check-models",)),
    Verb("start", "lifecycle", "start the project's stack (--detach: in the background)"),
    Verb("stop", "lifecycle", "stop what this project started"),
    Verb("restart", "lifecycle", "stop, then start"),
    Verb("status", "status", "channel, URL, tiers, resident models and ports"),
    Verb("top", "top", "live view: models, states, memory, queue, last decisions"),
    Verb("logs", "lifecycle", "the stack's log, or one tier's"),
    Verb("reload", "shell", 're-export this shell\'s env: eval "$(llmstack reload)"'),
    Verb("activate", "shell", 'shell hook: eval "$(llmstack activate bash|zsh|fish|powershell)"'),
)


def find(word: str | None) -> Verb | None:
    """The verb named (or aliased) ``word``, else None."""
    return next((v for v in VERBS if word == v.name or word in v.aliases), None)
