"""A hub repo's GGUF files, from the hub's own listing, and the one a quantisation names.

``llmstack add <tier> <repo>[:<quant>]`` asks the hub what the repo holds: ``GET
<endpoint>/api/models/<repo>/tree/main?recursive=true``, the tree API huggingface_hub's
``list_repo_tree`` calls, following its ``Link: <...>; rel="next"`` pages. The listing is
the hub's answer, so it is not trusted: every page is bounded (:data:`MAX_PAGE_BYTES`, a
deadline), so are the pages (:data:`MAX_PAGES`, same origin only) and the entries
(:data:`MAX_ENTRIES`); every entry must be a file or directory with a path the hub's naming
rules allow (:func:`~llmstack.config.hub_names.check_repo_file`: no ``..``, no leading
``/``, ...) and a size that is a whole number up to :data:`MAX_FILE_SIZE`. One bad entry
refuses the whole listing: a hub that sends it is not to be picked from.

:func:`pick` is pure: the file for a quantisation (``Q4_K_M`` when none is named), or the
file named outright (``<repo>:<file>.gguf``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..config.hub_names import UnsafeName, check_repo_file, check_repo_id, shown
from ..errors import UserError
from ..settings import Settings

MAX_PAGE_BYTES = 8 * 1024 * 1024
"""Bytes of one page of the listing (the hub's 1000 entries are about 200 kB)."""
MAX_PAGES = 20
MAX_ENTRIES = 10_000
MAX_FILE_SIZE = 1 << 44
"""16 TiB: a size above this is not a GGUF anyone serves, so the listing is refused."""
LISTING_TIMEOUT = 30.0
"""Seconds the whole listing (every page) may take; each read too."""
DEFAULT_QUANT = "Q4_K_M"
"""What Ollama serves when no tag names another."""
SHOWN_FILES = 12
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
QUANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


@dataclass(frozen=True)
class HubFile:
    """One file the hub lists: its path in the repo and its size in bytes."""

    path: str
    size: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class ListingError(UserError):
    """The hub's listing could not be had, or was refused."""


def list_files(repo: str, settings: Settings) -> list[HubFile]:
    """Every file of ``repo``'s ``main`` as the hub lists it (validated, bounded); a
    :class:`ListingError` for a repo that is not found, gated, unreachable or a listing that
    breaks a rule."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # lazy export

    check_repo_id(repo)
    if constants.HF_HUB_OFFLINE:
        raise ListingError(f"HF_HUB_OFFLINE is set: listing {repo}'s files needs the hub")
    endpoint = constants.ENDPOINT.rstrip("/")
    url: str | None = f"{endpoint}/api/models/{repo}/tree/main?recursive=true"
    headers = build_hf_headers(token=settings.hf_token)
    deadline = time.monotonic() + LISTING_TIMEOUT
    files: list[HubFile] = []
    try:
        with httpx.Client(timeout=LISTING_TIMEOUT, follow_redirects=True, max_redirects=5) as client:
            for _ in range(MAX_PAGES):
                if url is None:
                    return files
                page, url = _page(client, url, headers, deadline, repo, settings)
                files += _entries(page, repo)
                if len(files) > MAX_ENTRIES:
                    raise ListingError(f"the hub lists more than {MAX_ENTRIES} files in {repo}: "
                                       "refused; write hf_repo / hf_file by hand")
                if url is not None and not _same_origin(url, endpoint):
                    raise ListingError(f"the hub's next page {shown(url, 100)} is not on "
                                       f"{endpoint}: refused")
    except httpx.HTTPError as exc:
        raise ListingError(f"cannot list {repo} on {endpoint}: "
                           f"{str(exc).strip() or type(exc).__name__}") from None
    if url is not None:
        raise ListingError(f"the hub's listing of {repo} goes on past {MAX_PAGES} pages: refused")
    return files


def _page(client: Any, url: str, headers: dict[str, str], deadline: float, repo: str,
          settings: Settings) -> tuple[Any, str | None]:
    """One page's JSON (at most MAX_PAGE_BYTES, before ``deadline``) and the next page's URL."""
    import json

    with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            raise ListingError(_refusal(response.status_code, repo, settings))
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_PAGE_BYTES:
                raise ListingError(f"the hub's listing of {repo} is larger than "
                                   f"{MAX_PAGE_BYTES >> 20} MiB a page: refused")
            if time.monotonic() > deadline:
                raise ListingError(f"the hub's listing of {repo} took longer than "
                                   f"{LISTING_TIMEOUT:.0f} s")
        following = response.links.get("next", {}).get("url")
    try:
        return json.loads(body), following
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        raise ListingError(f"the hub's listing of {repo} is not JSON: refused") from None


def _refusal(status: int, repo: str, settings: Settings) -> str:
    hint = "" if settings.hf_token else " (if it is gated or private, export HF_TOKEN)"
    if status in (401, 403):
        return f"{repo}: the hub refuses access ({status}){hint or '; accept its terms on the hub'}"
    if status == 404:
        return f"{repo}: repository not found on the hub{hint}"
    return f"{repo}: the hub answered {status} to its file listing"


def _same_origin(url: str, endpoint: str) -> bool:
    a, b = urlsplit(url), urlsplit(endpoint)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _entries(page: Any, repo: str) -> list[HubFile]:
    """The files of one page; a :class:`ListingError` for anything but the hub's shape."""
    if not isinstance(page, list):
        raise ListingError(f"the hub's listing of {repo} is not a list of files: refused")
    files = []
    for entry in page[:MAX_ENTRIES + 1]:
        kind = entry.get("type") if isinstance(entry, dict) else None
        path, size = (entry.get("path"), entry.get("size")) if isinstance(entry, dict) else (None, None)
        if kind not in ("file", "directory") or not isinstance(path, str):
            raise ListingError(f"the hub's listing of {repo} has an entry that is not a file: "
                               f"{shown(str(entry), 100)}: refused")
        try:
            check_repo_file(path)
        except UnsafeName as exc:
            raise ListingError(f"the hub's listing of {repo} names a file {exc}: refused") from None
        if kind == "directory":
            continue
        if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
            raise ListingError(f"the hub's listing of {repo} gives {shown(path, 100)} the size "
                               f"{repr(size)[:40]}: refused")
        files.append(HubFile(path, size))
    return files


# --------------------------------------------------------------------------- picking


def ggufs(files: Sequence[HubFile]) -> list[HubFile]:
    """The model files among ``files``: ``.gguf``, not a vision projector (``mmproj``)."""
    return [f for f in files if f.path.lower().endswith(".gguf") and "mmproj" not in f.name.lower()]


def _for_quant(files: Sequence[HubFile], quant: str) -> list[HubFile]:
    """The files whose name carries ``quant`` as a whole token (``-Q4_K_M.gguf``,
    ``.Q4_K_M-00001-of-00002.gguf``), any case."""
    token = re.compile(rf"(?:^|[-._/]){re.escape(quant)}(?=[-.])", re.IGNORECASE)
    return [f for f in files if token.search(f.name)]


def pick(files: Sequence[HubFile], repo: str, selector: str | None) -> tuple[HubFile, str | None]:
    """The file ``selector`` names, and the quantisation that chose it (None when named
    outright): a ``.gguf`` path outright, else the one file of that quantisation
    (:data:`DEFAULT_QUANT` when None, or the repo's only GGUF). Split files
    (``-00001-of-00003.gguf``) are never picked: a tier serves one file."""
    models = ggufs(files)
    if selector is not None and selector.lower().endswith(".gguf"):
        found = [f for f in files if f.path == selector]
        if not found:
            raise UserError(f"{repo} has no file {shown(selector)}; {_listed(models)}")
        if _SPLIT.search(selector):
            raise UserError(f"{shown(selector)} is one part of a split model, and a tier serves "
                            "one file")
        return found[0], None
    whole = [f for f in models if not _SPLIT.search(f.name)]
    if selector is None and len(whole) == 1:
        return whole[0], None
    quant = selector or DEFAULT_QUANT
    if not QUANT.fullmatch(quant):
        raise UserError(f"{shown(quant)} is not a quantisation such as {DEFAULT_QUANT}, nor a "
                        ".gguf file name")
    matches = _for_quant(models, quant)
    single = [f for f in matches if not _SPLIT.search(f.name)]
    if len(single) == 1:
        return single[0], quant
    if len(single) > 1:
        raise UserError(f"{repo} has {len(single)} {quant} files: "
                        f"{', '.join(f.path for f in single[:SHOWN_FILES])}; name one: "
                        f"{repo}:{single[0].path}")
    if matches:
        raise UserError(f"{repo}'s {quant} model is split into {len(matches)} files, and a tier "
                        f"serves one; pick another quantisation ({_listed(whole)})")
    raise UserError(f"{repo} has no {quant} file; {_listed(whole)}")


def _listed(files: Sequence[HubFile]) -> str:
    if not files:
        return "it has no single-file GGUF"
    more = f" (+{len(files) - SHOWN_FILES} more)" if len(files) > SHOWN_FILES else ""
    return f"its GGUF files: {', '.join(f.path for f in files[:SHOWN_FILES])}{more}"
