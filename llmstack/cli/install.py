"""The project verbs: ``init``, ``configure``, ``install`` and ``setup``.

``init`` seeds .llmstack/models.ini from the bundled template and never overwrites
it. ``configure`` renders .llmstack/opencode.json and AGENTS.md for the pinned
channel. ``install`` is the original's verb: pin a channel (``--current``, ``--next``,
``--external [URL]``), seed models.ini when local, and configure. ``setup`` takes a
fresh project all the way: init, download, configure, start. ``--print`` writes
nothing and prints the opencode.json that would be written; ``configure --print
claude|codex|codex-models`` prints what points Claude Code or Codex at the same stack
(:mod:`llmstack.project.clients`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from importlib import resources

from ..config.ini import bundled_template_text, parse_stack, read_stack
from ..config.schema import Stack
from ..project.channels import (
    Channel,
    fetch_models_ini,
    for_channel,
    normalise_url,
    pinned,
    require_local,
    resolve_install,
    write_marker,
)
from ..project.clients import CODEX_CATALOG_NAME, claude_env, codex_catalog, codex_toml
from ..project.files import GeneratedFiles, create_atomic
from ..project.opencode import LOCAL_PROVIDER_NAME, local_base_url, render, to_text
from ..project.paths import Project, find_project
from ..settings import Settings
from .registry import Command

PRINT_TARGETS = ("opencode", "claude", "codex", "codex-models")
"""What ``configure --print`` shows: opencode.json (the default), Claude Code's environment,
Codex's config.toml, Codex's model catalog."""


def say(message: str) -> None:
    print(message, file=sys.stderr)


def agents_md_text() -> str:
    return resources.files("llmstack").joinpath("data/AGENTS.md").read_text(encoding="utf-8")


def init(project: Project) -> int:
    """Seed models.ini from the bundled template unless one exists (refused when external)."""
    require_local(project, "init")
    return _seed(project)


def _seed(project: Project) -> int:
    path = project.models_ini
    if create_atomic(path, bundled_template_text()):
        say(f"[OK] wrote {path} from the bundled template: edit its tiers, then `llmstack configure`")
    else:
        say(f"[=] {path} already exists; left as it is")
    return 0


@dataclass(frozen=True)
class Rendered:
    """An opencode.json ready to write, and the stack it was made from."""

    stack: Stack
    text: str
    where: str
    """What it points at, for messages: the base URL."""


def _local_stack(project: Project, settings: Settings, seeded: bool) -> Stack:
    path = project.models_ini
    if seeded and not path.exists():  # --print on a fresh project: what init + configure write
        return parse_stack(bundled_template_text(), str(path), settings.variables)
    return read_stack(path, settings.variables, "create one: llmstack init, or llmstack setup")


def render_for(project: Project, settings: Settings, channel: Channel, demo: bool = False,
               fresh_ok: bool = False) -> Rendered:
    """opencode.json for the demo stack, the local models.ini (current or next), or a remote's."""
    name = LOCAL_PROVIDER_NAME
    if demo:
        from ..config.demo import demo_stack
        stack = demo_stack()
        base = local_base_url(stack)
    elif channel.external:
        assert channel.url is not None
        say(f"[*] fetching models.ini from {channel.url}/models.ini ...")
        stack = parse_stack(fetch_models_ini(channel.url), f"{channel.url}/models.ini",
                            settings.variables)
        base, name = f"{channel.url}/v1", f"llmstack (remote stack at {channel.url})"
    else:
        stack = for_channel(_local_stack(project, settings, fresh_ok), channel)
        base = local_base_url(stack)
    config = render(stack, base, [str(project.agents_md.resolve())], name, settings.opencode)
    return Rendered(stack, to_text(config), base)


def _write(project: Project, rendered: Rendered) -> None:
    files = GeneratedFiles(project.state)
    for path, text in ((project.agents_md, agents_md_text()), (project.opencode_json, rendered.text)):
        result = files.write(path, text)
        if result.backup is not None:
            say(f"[!] {path} had been edited since llmstack wrote it; your version is kept as "
                f"{result.backup.name} (put lasting changes in models.ini, or in an opencode.json "
                "of the project, which opencode merges over this one)")
        say(f"[OK] {path}" if result.changed else f"[=] {path} (unchanged)")


def client_text(target: str, project: Project, rendered: Rendered) -> str:
    """What ``configure --print <target>`` shows for the stack ``rendered`` points at."""
    if target == "claude":
        return claude_env(rendered.stack, rendered.where.removesuffix("/v1"))
    if target == "codex":
        return codex_toml(rendered.where, (project.state / CODEX_CATALOG_NAME).resolve())
    if target == "codex-models":
        return codex_catalog(rendered.stack)
    return rendered.text


def configure(project: Project, settings: Settings, print_only: str | None = None,
              demo: bool = False) -> int:
    """Render opencode.json + AGENTS.md for the pinned channel (or the demo stack); with
    ``print_only`` (one of PRINT_TARGETS), print that client's settings instead."""
    channel = pinned(project) or Channel("current")
    rendered = render_for(project, settings, channel, demo)
    if print_only:
        sys.stdout.write(client_text(print_only, project, rendered))
        return 0
    _write(project, rendered)
    say(f"    opencode talks to {rendered.where}; run it with "
        f"OPENCODE_CONFIG={project.opencode_json} opencode")
    return 0


def install(project: Project, settings: Settings, flag: Channel | None,
            print_only: bool = False) -> int:
    """The original's ``install``: pin the channel, seed models.ini if local, configure."""
    resolved = resolve_install(project, flag, settings)
    for note in resolved.notes:
        say(f"[!] {note}")
    channel = resolved.channel
    if not channel.external and not print_only:
        _seed(project)
    rendered = render_for(project, settings, channel, fresh_ok=print_only)
    if print_only:
        sys.stdout.write(rendered.text)
        return 0
    _write(project, rendered)
    write_marker(project.default_channel, channel)
    say(f"[OK] channel {channel} pinned in {project.default_channel}")
    if channel.external:
        say(f"    no local stack: opencode uses {rendered.where}. Run `opencode` with "
            f"OPENCODE_CONFIG={project.opencode_json}")
    else:
        say("    next: `llmstack download`, `llmstack start`, then `opencode` "
            f"(OPENCODE_CONFIG={project.opencode_json})")
    return 0


def setup(project: Project, settings: Settings, demo: bool = False) -> int:
    """A fresh project to a running stack: init, download, configure, start."""
    require_local(project, "setup")
    if demo:
        say("[1/4] models.ini: skipped (the demo stack is built in)")
        say("[2/4] download: skipped (the demo's tiny models are made on first start)")
    else:
        say("[1/4] models.ini")
        init(project)
        stack = for_channel(read_stack(project.models_ini, settings.variables),
                            pinned(project) or Channel("current"))
        say("[2/4] download")
        from ..models.download import download_tiers
        code = download_tiers(stack, [t.name for t in stack.tiers if t.backend == "gguf"],
                              "current", settings)
        if code:
            return code
    say("[3/4] opencode.json")
    configure(project, settings, demo=demo)
    say("[4/4] start")
    from ..project.daemon import start_detached
    code = start_detached(project, settings, demo=demo)
    if code:
        return code
    if shutil.which("opencode", path=settings.search_path) is None:
        say("[!] opencode is not on PATH; install it with `npm install -g opencode-ai` "
            "(or `curl -fsSL https://opencode.ai/install | sh`)")
    say(f"[OK] ready: run `opencode` with OPENCODE_CONFIG={project.opencode_json} "
        "(or `eval \"$(llmstack activate bash)\"` once, then just `opencode`)")
    return 0


def _configure_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print", nargs="?", const="opencode", choices=PRINT_TARGETS,
                        dest="print_only", metavar="CLIENT",
                        help="write nothing; print to stdout the opencode.json (the default), "
                             "or Claude Code's environment (claude: eval it), or Codex's "
                             "config.toml (codex) and the model catalog it names "
                             "(codex-models)")
    parser.add_argument("--demo", action="store_true", help="for the built-in demo stack")


def _install_arguments(parser: argparse.ArgumentParser) -> None:
    from ..project.channels import DEFAULT_REMOTE_URL

    parser.add_argument("--print", "-n", action="store_true", dest="print_only",
                        help="print the opencode.json to stdout and write nothing")
    channel = parser.add_mutually_exclusive_group()
    channel.add_argument("--current", action="store_const", const="current", dest="channel",
                         help="serve the models' current files (the default)")
    channel.add_argument("--next", action="store_const", const="next", dest="channel",
                         help="serve the queued upgrades (hf_file_next / model_next)")
    channel.add_argument("--external", nargs="?", const="", metavar="URL", dest="external",
                         help="be a client of the stack at URL (default: $LLMSTACK_REMOTE_URL, "
                              f"else {DEFAULT_REMOTE_URL}); no local stack")


def _setup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo", action="store_true",
                        help="the built-in demo stack instead (no models.ini, no downloads)")


def _init(args: argparse.Namespace, settings: Settings) -> int:
    return init(find_project(settings))


def _configure(args: argparse.Namespace, settings: Settings) -> int:
    return configure(find_project(settings), settings, args.print_only, args.demo)


def _install(args: argparse.Namespace, settings: Settings) -> int:
    flag = (Channel("external", normalise_url(args.external) if args.external else None)
            if args.external is not None else Channel(args.channel) if args.channel else None)
    return install(find_project(settings), settings, flag, args.print_only)


def _setup(args: argparse.Namespace, settings: Settings) -> int:
    return setup(find_project(settings), settings, args.demo)


COMMANDS = {
    "init": Command(_init, "Write the bundled models.ini template to .llmstack/models.ini (or "
                           "$LLMSTACK_MODELS_INI); an existing file is never touched."),
    "configure": Command(_configure, "Render opencode's config for this project's pinned "
                                     "channel: the local models.ini (current or next files) or, "
                                     "in external mode, the remote stack's. A file you edited "
                                     "is kept as a .bak before it is replaced.",
                         _configure_arguments),
    "install": Command(_install, "The original's verb: pin the channel in "
                                 ".llmstack/default-channel, seed models.ini when local, and "
                                 "render opencode.json + AGENTS.md. Channel: flag, else "
                                 "$LLMSTACK_REMOTE_URL (external), else the pinned one, else "
                                 "current.", _install_arguments),
    "setup": Command(_setup, "Take this project from nothing to a running stack: seed "
                             "models.ini, download the tiers' GGUFs, render opencode.json, "
                             "start the stack in the background.", _setup_arguments),
}
