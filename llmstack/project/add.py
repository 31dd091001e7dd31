"""``llmstack add <tier> <repo>[:<quant>]``: a tier from a model's name, as Ollama users expect.

The file comes from the hub's listing (:mod:`llmstack.models.hub_listing`: the quantisation's
one file, ``Q4_K_M`` by default); its size becomes ``size_gb``. Unless ``--no-download``, the
file is downloaded (verified, as ``llmstack download`` does) and its GGUF header gives the
tier's window (``ctx_size``). Before anything is written the new models.ini is parsed whole
(the hub's file name must read back exactly, the tier's name and aliases must be free), and
checked against the memory budget beside the tiers that stay resident: a tier that cannot fit
is written with a warning (``serve`` would refuse it in one line). models.ini gets one more
section, appended in one atomic write; every comment and key already there stays.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from swapper.small_files import write_atomic

from ..config.hub_names import shown
from ..config.ini import ModelsIniError, parse_stack, read_models_ini
from ..config.keys import check_tier_name
from ..config.schema import ROLES, Stack
from ..errors import UserError
from ..models.hf_cache import HubCache, TierFile, human_size
from ..models.hub_listing import HubFile, list_files, pick
from ..settings import Settings

CTX_MAX = 1 << 20
"""The largest window written from a GGUF header (a header is the file's word, not ours)."""
NEW_FILE_HEADER = ("; models.ini - tiers written by `llmstack add`. `llmstack template` prints "
                   "every key\n; with what it means.\n")


@dataclass(frozen=True)
class AddRequest:
    """What ``llmstack add`` was asked for."""

    tier: str
    model: str
    """``<repo>``, ``<repo>:<quant>`` or ``<repo>:<file>.gguf``."""
    models_ini: Path
    role: str | None = None
    """None: the tier's name when it names a role (``fast``, ``agent``, ...), else no role."""
    download: bool = True


def split_model(model: str) -> tuple[str, str | None]:
    """``org/name:Q4_K_M`` -> (``org/name``, ``Q4_K_M``); no ``:``, no selector."""
    repo, sep, selector = model.partition(":")
    return repo, (selector or None) if sep else None


def section_text(request: AddRequest, repo: str, chosen: HubFile, quant: str | None,
                 ctx_size: int | None) -> str:
    """The tier's section, as appended to models.ini."""
    role = request.role or (request.tier if request.tier in ROLES else None)
    lines = [f"[{request.tier}]", *([f"role = {role}"] if role else []), f"hf_repo = {repo}",
             f"hf_file = {chosen.path}", f"size_gb = {math.ceil(chosen.size / 2**30 * 100) / 100}",
             *([f"quant = {quant}"] if quant else []),
             *([f"ctx_size = {ctx_size}"] if ctx_size else [])]
    return "\n".join(lines) + "\n"


def _with_section(text: str, section: str) -> str:
    text = text or NEW_FILE_HEADER
    return text + ("" if text.endswith("\n") else "\n") + "\n" + section


def _parsed(text: str, request: AddRequest, repo: str, chosen: HubFile,
            settings: Settings) -> Stack:
    """models.ini with the section added, parsed whole; the hub's names must read back as
    they are (a name an ini line cannot hold, such as one with `` ;``, is refused)."""
    try:
        stack = parse_stack(text, str(request.models_ini), settings.variables)
    except ModelsIniError as exc:
        raise UserError(f"[{request.tier}] cannot be added: {exc.report()}", 2) from None
    tier = stack.tier(request.tier)
    if tier is None or (tier.hf_repo, tier.hf_file) != (repo, chosen.path):
        raise UserError(f"the hub's file name {shown(chosen.path)} cannot be written in "
                        "models.ini as it is: refused", 2)
    return stack


def _memory_warning(stack: Stack, settings: Settings) -> str | None:
    """Why ``stack``'s tiers do not fit the memory budget beside those that stay resident."""
    from ..models.llama_server import find_llama_server
    from ..serving.swapper_config import budgeted_config

    hub = HubCache(settings.hub_cache)
    server = find_llama_server(settings, stack.llama_server_bin) or "llama-server"
    try:
        budgeted_config(stack, settings, server, hub.local_files(stack), hub)
    except ModelsIniError as exc:
        return f"warning: {exc}; serve refuses this models.ini until it fits"
    return None


def _window(settings: Settings, file: TierFile) -> int | None:
    """The trained context length in the cached file's GGUF header (at most CTX_MAX)."""
    from ..models.gguf_info import read_gguf_info

    cached = HubCache(settings.hub_cache).find_cached(file)
    if cached is None:
        return None
    try:
        length = read_gguf_info(cached.path).context_length
    except (OSError, ValueError, IndexError, KeyError):
        return None
    return min(length, CTX_MAX) if length > 0 else None


def _fetch(file: TierFile, settings: Settings, out: TextIO) -> None:
    from ..models.download import download

    [result] = download([file], settings, out)
    if result.outcome == "failed":
        raise UserError(f"{file.repo}/{file.filename}: {result.detail}; models.ini is unchanged")


def add_tier(request: AddRequest, settings: Settings, out: TextIO = sys.stderr) -> int:
    """The ``add`` verb; 0, or a UserError (nothing written)."""
    try:
        check_tier_name(request.tier)
    except ValueError as exc:
        raise UserError(str(exc), 2) from None
    repo, selector = split_model(request.model)
    try:
        before = read_models_ini(request.models_ini)
    except FileNotFoundError:
        before = ""
    if before and parse_stack(before, str(request.models_ini), settings.variables).tier(
            request.tier) is not None:
        raise UserError(f"{request.models_ini} already has a tier or alias {request.tier!r}; "
                        "remove it first, or pick another name", 2)
    chosen, quant = pick(list_files(repo, settings), repo, selector)
    file = TierFile(request.tier, "current", repo, chosen.path)
    print(f"[*] {repo}{':' + selector if selector else ''}: {chosen.path} "
          f"({human_size(chosen.size)})", file=out, flush=True)
    stack = _parsed(_with_section(before, section_text(request, repo, chosen, quant, None)),
                    request, repo, chosen, settings)
    warning = _memory_warning(stack, settings)
    if warning:
        print(f"[!] {warning}", file=out, flush=True)
    if request.download:
        _fetch(file, settings, out)
    window = _window(settings, file)
    text = _with_section(before, section_text(request, repo, chosen, quant, window))
    stack = _parsed(text, request, repo, chosen, settings)
    if warning is None and (warning := _memory_warning(stack, settings)):
        print(f"[!] {warning}", file=out)
    _replace(request.models_ini, before, text)
    got = f", window {window} from its GGUF header" if window else ""
    hint = "" if request.download else f"; fetch it: llmstack download {request.tier}"
    print(f"[OK] [{request.tier}] added to {request.models_ini}: {repo} / {chosen.path}{got}"
          f"{hint}", file=out)
    return 0


def _replace(path: Path, before: str, text: str) -> None:
    """Write ``text`` unless the file changed since ``before`` was read (then nothing)."""
    try:
        now = read_models_ini(path)
    except FileNotFoundError:
        now = ""
    if now != before:
        raise UserError(f"{path} changed while the tier was being added; nothing written, "
                        "run the command again")
    write_atomic(path, text)
