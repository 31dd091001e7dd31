"""Channels: which models a project serves (current / next) or whose stack it uses (external).

``install`` pins the channel in ``.llmstack/default-channel``; a running stack
records what it serves in ``.llmstack/active-channel``. Both hold one line,
``<channel>[ <url>]``, so a shell can ``read -r channel url < file``.

Precedence is flag > environment > pinned default > ``current``, and an environment
variable never quietly beats a flag: when both are given and disagree the flag
wins and the caller gets a note saying the variable was ignored. The environment
chooses a channel only for the command it is given to (``install`` with
``$LLMSTACK_REMOTE_URL``, ``serve`` with ``$LLMSTACK_USE_NEXT``); every other verb
goes by the pinned channel, so a variable left over from another project's shell
cannot turn this one into a client.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from swapper.small_files import RECORD_LIMIT, UnreadableFile, read_small, write_atomic

from ..config.address import DEFAULT_HOST, DEFAULT_PORT, url_for
from ..errors import UserError
from ..settings import API_KEYS, REMOTE_URL, USE_NEXT, Settings
from .paths import Project

if TYPE_CHECKING:
    from ..config.schema import Stack

LOCAL_CHANNELS = ("current", "next")
DEFAULT_REMOTE_URL = url_for(DEFAULT_HOST, DEFAULT_PORT)
FETCH_TIMEOUT = 15.0


@dataclass(frozen=True)
class Channel:
    """A channel; ``url`` only (and always) for ``external``."""

    name: str
    url: str | None = None

    def __str__(self) -> str:
        return f"{self.name} {self.url}" if self.url else self.name

    @property
    def external(self) -> bool:
        return self.name == "external"


CURRENT = Channel("current")


@dataclass(frozen=True)
class Resolved:
    """A channel, where it came from, and notes the user should see (one line each)."""

    channel: Channel
    source: str
    notes: tuple[str, ...] = ()


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UserError(f"external URL {url!r} must start with http:// or https://", 2)
    return url


def read_marker(path: Path) -> Channel | None:
    """The channel in a marker file, None when it is missing; a bad marker (or one that
    is not a regular file of at most :data:`~swapper.small_files.RECORD_LIMIT` bytes)
    is a UserError."""
    try:
        text = read_small(path, RECORD_LIMIT).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return None
    except UnreadableFile as exc:
        raise UserError(f"{exc} (run `llmstack install --current|--next|--external URL` to "
                        "rewrite it)") from None
    name, _, url = text.partition(" ")
    if name in LOCAL_CHANNELS and not url:
        return Channel(name)
    if name == "external" and url.strip():
        return Channel(name, normalise_url(url))
    raise UserError(f"{path}:1: expected 'current', 'next' or 'external <url>', found {text[:80]!r} "
                    "(run `llmstack install --current|--next|--external URL` to rewrite it)")


def write_marker(path: Path, channel: Channel) -> None:
    write_atomic(path, f"{channel}\n")


def pinned(project: Project) -> Channel | None:
    return read_marker(project.default_channel)


def live_channel(project: Project) -> Channel:
    """What runs now (``active-channel``), else the pinned channel, else current."""
    return read_marker(project.active_channel) or pinned(project) or CURRENT


def resolve_install(project: Project, flag: Channel | None, settings: Settings) -> Resolved:
    """The channel ``install`` pins: flag > $LLMSTACK_REMOTE_URL > pinned > current.

    ``--external`` without a URL takes $LLMSTACK_REMOTE_URL, else the pinned external
    URL, else :data:`DEFAULT_REMOTE_URL` (the default local stack's).
    """
    env_url = settings.remote_url
    pin = pinned(project)
    if flag is not None:
        if flag.external and flag.url is None:
            url = env_url or (pin.url if pin and pin.url else DEFAULT_REMOTE_URL)
            flag = Channel("external", normalise_url(url))
        notes: tuple[str, ...] = ()
        if env_url and (not flag.external or normalise_url(env_url) != flag.url):
            notes = (f"--{flag.name} given: ignoring ${REMOTE_URL}={env_url}",)
        return Resolved(flag, "flag", notes)
    if env_url:
        channel = Channel("external", normalise_url(env_url))
        notes = ()
        if pin is not None and pin != channel:
            notes = ((f"${REMOTE_URL} is set: using external {channel.url} instead of the "
                      f"pinned '{pin}' (pass --current or --next to keep this project local)"),)
        return Resolved(channel, "environment", notes)
    if pin is not None:
        return Resolved(pin, "pinned")
    return Resolved(CURRENT, "default")


def resolve_serve(project: Project | None, flag: str | None, settings: Settings) -> Resolved:
    """The channel ``serve`` serves: --channel > $LLMSTACK_USE_NEXT > pinned > current.

    With ``project`` None (a models.ini named explicitly) no pinned channel applies.
    """
    use_next = settings.use_next
    env = None if use_next is None else "next" if use_next else "current"
    if flag is not None:
        notes = ((f"--channel {flag} given: ignoring ${USE_NEXT}={settings.use_next_text}",)
                 if env is not None and env != flag else ())
        return Resolved(Channel(flag), "flag", notes)
    if env is not None:
        return Resolved(Channel(env), "environment")
    pin = pinned(project) if project is not None else None
    if pin is not None and pin.external:
        raise UserError(external_refusal(pin, "serve") + " (or pass --channel current)")
    return Resolved(pin, "pinned") if pin else Resolved(CURRENT, "default")


def external_refusal(channel: Channel, verb: str) -> str:
    return (f"`llmstack {verb}` works on a local stack, but this project is a client of "
            f"{channel.url} (pinned in .llmstack/default-channel); run it where that stack "
            "runs, or make this project local with `llmstack install --current`")


def require_local(project: Project, verb: str) -> None:
    """Raise a UserError when the project is pinned to an external stack."""
    pin = pinned(project)
    if pin is not None and pin.external:
        raise UserError(external_refusal(pin, verb))


def next_stack(stack: Stack) -> Stack:
    """The stack as the next channel serves it: queued files and models in place of current."""
    tiers = [t.queued() or t for t in stack.tiers]
    if tiers == list(stack.tiers):
        raise UserError(f"{stack.path}: no tier queues an upgrade (hf_file_next or model_next), "
                        "so the next channel would serve exactly the current models")
    return replace(stack, tiers=tuple(tiers))


def for_channel(stack: Stack, channel: Channel) -> Stack:
    return next_stack(stack) if channel.name == "next" else stack


def fetch_models_ini(url: str) -> str:
    """``GET <url>/models.ini`` of a running stack; one-line UserErrors for every failure."""
    import httpx

    address = f"{url}/models.ini"
    try:
        response = httpx.get(address, headers={"Accept": "text/plain"}, timeout=FETCH_TIMEOUT)
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach {address}: {exc or type(exc).__name__} "
                        "(is `llmstack start` running there, and the URL right?)") from None
    if response.status_code == 404:
        raise UserError(f"{address} answered 404: that stack serves the built-in demo, which has "
                        "no models.ini to share; point it at a models.ini first")
    if response.status_code in (401, 403):
        raise UserError(f"{address} answered {response.status_code}: that stack requires an "
                        f"API key ({API_KEYS}), which external mode cannot send yet")
    if response.status_code != 200:
        raise UserError(f"{address} answered HTTP {response.status_code}")
    if not response.text.strip():
        raise UserError(f"{address} answered with an empty models.ini")
    return response.text
