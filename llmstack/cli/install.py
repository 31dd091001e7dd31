"""The project verbs: ``init``, ``configure``, ``install`` and ``setup``.

``init`` seeds .llmstack/models.ini from the bundled template and never overwrites
it. ``configure`` renders .llmstack/opencode.json and AGENTS.md for the pinned
channel. ``install`` is the original's verb: pin a channel (``--current``, ``--next``,
``--external [URL]``), seed models.ini when local, and configure. ``setup`` takes a
fresh project all the way: init, download, configure, start. ``--print`` writes
nothing and prints the opencode.json that would be written.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from importlib import resources

from ..project.channels import (
    Channel,
    fetch_models_ini,
    for_channel,
    pinned,
    require_local,
    resolve_install,
    write_marker,
)
from ..config.ini import Stack, bundled_template_text, load_stack, parse_stack
from ..project.files import GeneratedFiles, create_atomic
from ..project.opencode import LOCAL_PROVIDER_NAME, local_base_url, render, to_text
from ..project.paths import Project, UserError


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


def _local_stack(project: Project, seeded: bool) -> Stack:
    path = project.models_ini
    if path.exists():
        return load_stack(path)
    if seeded:  # --print on a fresh project: show what init + configure would write
        return parse_stack(bundled_template_text(), str(path))
    raise UserError(f"no models.ini at {path}: run `llmstack init` (or `llmstack setup`) first")


def render_for(project: Project, channel: Channel, demo: bool = False,
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
        stack = parse_stack(fetch_models_ini(channel.url), f"{channel.url}/models.ini")
        base, name = f"{channel.url}/v1", f"llmstack (remote stack at {channel.url})"
    else:
        stack = for_channel(_local_stack(project, fresh_ok), channel)
        base = local_base_url(stack)
    config = render(stack, base, [str(project.agents_md.resolve())], name)
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


def configure(project: Project, print_only: bool = False, demo: bool = False) -> int:
    """Render opencode.json + AGENTS.md for the pinned channel (or the demo stack)."""
    channel = pinned(project) or Channel("current")
    rendered = render_for(project, channel, demo)
    if print_only:
        sys.stdout.write(rendered.text)
        return 0
    _write(project, rendered)
    say(f"    opencode talks to {rendered.where}; run it with "
        f"OPENCODE_CONFIG={project.opencode_json} opencode")
    return 0


def install(project: Project, flag: Channel | None, print_only: bool = False) -> int:
    """The original's ``install``: pin the channel, seed models.ini if local, configure."""
    resolved = resolve_install(project, flag)
    for note in resolved.notes:
        say(f"[!] {note}")
    channel = resolved.channel
    if not channel.external and not print_only:
        _seed(project)
    rendered = render_for(project, channel, fresh_ok=print_only)
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


def setup(project: Project, demo: bool = False) -> int:
    """A fresh project to a running stack: init, download, configure, start."""
    require_local(project, "setup")
    if demo:
        say("[1/4] models.ini: skipped (the demo stack is built in)")
        say("[2/4] download: skipped (the demo's tiny models are made on first start)")
    else:
        say("[1/4] models.ini")
        init(project)
        stack = for_channel(load_stack(project.models_ini), pinned(project) or Channel("current"))
        say("[2/4] download")
        from ..models.download import download_tiers
        code = download_tiers(stack, [t.name for t in stack.tiers if t.backend == "gguf"], "current")
        if code:
            return code
    say("[3/4] opencode.json")
    configure(project, demo=demo)
    say("[4/4] start")
    from ..project.daemon import start_detached
    code = start_detached(project.root, demo=demo)
    if code:
        return code
    if shutil.which("opencode") is None:
        say("[!] opencode is not on PATH; install it with `npm install -g opencode-ai` "
            "(or `curl -fsSL https://opencode.ai/install | sh`)")
    say(f"[OK] ready: run `opencode` with OPENCODE_CONFIG={project.opencode_json} "
        "(or `eval \"$(llmstack activate bash)\"` once, then just `opencode`)")
    return 0

