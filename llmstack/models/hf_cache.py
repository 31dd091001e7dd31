"""Where each GGUF tier's file lives: the standard Hugging Face hub cache, read without the network.

The layout is huggingface_hub's (``models--<org>--<name>/{refs,snapshots,blobs}``): a ref
names a commit, ``snapshots/<commit>/<file>`` links to ``blobs/<etag>``, and for LFS files
the etag is the file's sha256. This module is the one owner of "which file serves this
tier": ``serve``, ``download`` and ``check`` all go through :func:`tier_files` and
:meth:`HubCache.find_cached`. A tier with ``gguf_path`` is served from that file instead
(when it is a regular file, :func:`regular_file`); the hub is never asked about it. It is
stdlib-only so ``serve`` and ``check`` never import huggingface_hub. Where the cache is
comes from :attr:`llmstack.settings.Settings.hub_cache`.

``download`` also records the size the hub announced for each blob
(``<llmstack cache>/hub-metadata/<etag>.json``, :class:`HubSizes`); being keyed by content,
a record never goes stale, and ``check`` compares the file on disk against it offline.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from swapper.small_files import read_json, write_atomic

from ..config.hub_names import (
    UnsafeName,
    check_blob_id,
    check_commit,
    check_repo_file,
    check_repo_id,
    inside,
    resolves_inside,
)
from ..config.schema import Stack, Tier

Channel = Literal["current", "next"]
REVISION = "main"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TierFile:
    """The GGUF one tier serves in one channel."""

    tier: str
    channel: Channel
    repo: str
    filename: str
    revision: str = REVISION


@dataclass(frozen=True)
class CachedFile:
    """A tier file found in the cache."""

    path: Path
    """``snapshots/<commit>/<file>`` (what llama-server is given)."""
    commit: str
    ref_commit: str | None
    """The commit ``refs/<revision>`` names, None when the cache has no such ref."""
    etag: str
    """The blob's name: the sha256 for LFS files."""
    size: int

    @property
    def other_revision(self) -> bool:
        """The file exists only in a snapshot other than the one the ref points to."""
        return self.ref_commit is not None and self.commit != self.ref_commit

    @property
    def sha256(self) -> str | None:
        return self.etag if _SHA256.fullmatch(self.etag) else None


def tier_file(tier: Tier, channel: Channel = "current") -> TierFile | None:
    """The hub file a GGUF tier serves in ``channel`` (next falls back to current); None if
    hosted or a local file (``gguf_path``)."""
    if tier.backend != "gguf" or not tier.hf_repo or not tier.hf_file:
        return None
    queued = tier.queued() if channel == "next" else None
    if queued is not None and queued.hf_repo and queued.hf_file:
        return TierFile(tier.name, "next", queued.hf_repo, queued.hf_file)
    return TierFile(tier.name, "current", tier.hf_repo, tier.hf_file)


@dataclass(frozen=True)
class HubCache:
    """huggingface_hub's cache at ``root``, read without the network."""

    root: Path

    def repo_dir(self, repo: str) -> Path:
        """``<hub cache>/models--<org>--<name>``; ``repo`` must be a hub repo id (UnsafeName)."""
        return self.root / ("models--" + check_repo_id(repo).replace("/", "--"))

    def blob_path(self, repo: str, etag: str) -> Path:
        """``<repo dir>/blobs/<etag>``; ``etag`` must be a blob id (UnsafeName)."""
        return self.repo_dir(repo) / "blobs" / check_blob_id(etag, "the hub's etag")

    def in_storage(self, repo: str, path: Path) -> Path:
        """``path`` if it is a file of ``repo``'s: named inside its storage folder, and
        resolving (every link followed) inside it or huggingface_hub's shared blob store;
        else UnsafeName."""
        storage = self.repo_dir(repo)
        if not inside(path, storage) or not resolves_inside(path, storage, self.root / "blobs"):
            raise UnsafeName(f"{path} resolves outside {storage}: refused")
        return path

    def missing_path(self, repo: str, filename: str) -> Path:
        """What llama-server is given for a file not downloaded: where the ref's snapshot would
        hold it. It fails to load there, and never reads a file outside the cache."""
        return self.repo_dir(repo) / "snapshots" / REVISION / check_repo_file(filename)

    def find_cached(self, file: TierFile) -> CachedFile | None:
        """The file in the ref's snapshot, else in any other snapshot (newest first), else None.
        A snapshot entry that resolves outside the repo's storage is never returned."""
        storage = self.repo_dir(file.repo)
        name = check_repo_file(file.filename)
        ref = _ref_commit(storage, file.revision)
        snapshots = storage / "snapshots"
        candidates = [snapshots / ref / name] if ref else []
        try:
            others = [d / name for d in snapshots.iterdir() if d / name not in candidates]
        except OSError:
            others = []
        candidates += sorted((p for p in others if p.is_file()),
                             key=lambda p: p.lstat().st_mtime, reverse=True)
        for path in candidates:
            try:
                self.in_storage(file.repo, path)
                size = path.stat().st_size  # follows the link: a dangling one is not a file
            except (OSError, UnsafeName):
                continue
            return CachedFile(path, path.parent.name, ref, path.resolve().name, size)
        return None

    def other_cached_files(self, repo: str, suffix: str = ".gguf") -> list[str]:
        """Names of ``suffix`` files cached for ``repo`` in any snapshot (to hint at a renamed
        file)."""
        return sorted({p.name for p in (self.repo_dir(repo) / "snapshots").glob(f"*/*{suffix}")
                       if p.exists()})

    def local_files(self, stack: Stack, channel: Channel = "current") -> dict[str, Path | None]:
        """Each GGUF tier's file (None when not downloaded, or its ``gguf_path`` is not a
        regular file): what ``serve`` runs."""
        found = {f.tier: self.find_cached(f) for f in tier_files(stack, channel)}
        files = {name: cached.path if cached else None for name, cached in found.items()}
        files.update((t.name, regular_file(Path(t.gguf_path))) for t in stack.tiers
                     if t.backend == "gguf" and t.gguf_path)
        return files


def size_gb(tier: Tier) -> float | None:
    """The tier's ``size_gb``, else its ``gguf_path`` file's size in GiB; None when unknown."""
    if tier.size_gb is not None or not tier.gguf_path:
        return tier.size_gb
    found = regular_file(Path(tier.gguf_path))
    return found.stat().st_size / 2**30 if found else None


def regular_file(path: Path) -> Path | None:
    """``path`` when it is a regular file (links followed); None when it is absent, or a
    directory, FIFO or device that reading would block on or misread."""
    try:
        return path if stat.S_ISREG(path.stat().st_mode) else None
    except (OSError, ValueError):
        return None


def _ref_commit(storage: Path, revision: str) -> str | None:
    """The commit ``refs/<revision>`` names (None unless a commit hash is there)."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        return check_commit((storage / "refs" / check_repo_file(revision)).read_text().strip())
    except (OSError, UnicodeDecodeError, UnsafeName):
        return None


def tier_files(stack: Stack, channel: Channel = "current",
               names: Sequence[str] | None = None) -> list[TierFile]:
    """The files of the GGUF tiers among ``names`` (all tiers when None), in file order."""
    tiers = stack.tiers if names is None else [t for t in stack.tiers if t.name in names]
    return [f for f in (tier_file(t, channel) for t in tiers) if f is not None]


# --------------------------------------------------------------------------- hub metadata records


@dataclass(frozen=True)
class HubSizes:
    """The sizes the hub announced, one record per blob: ``<directory>/<etag>.json``
    (``<llmstack cache>/hub-metadata``)."""

    directory: Path

    @classmethod
    def under(cls, cache: Path) -> HubSizes:
        """The records in llmstack's cache (:attr:`llmstack.settings.Settings.cache_dir`)."""
        return cls(cache / "hub-metadata")

    def _record_path(self, etag: str) -> Path:
        """``<directory>/<etag>.json``; ``etag`` must be a blob id (UnsafeName)."""
        return self.directory / f"{check_blob_id(etag)}.json"

    def record(self, etag: str, size: int) -> None:
        """Remember the size the hub announced for blob ``etag`` (atomic write)."""
        write_atomic(self._record_path(etag), json.dumps({"size": size}))

    def recorded(self, etag: str) -> int | None:
        """The size :meth:`record` kept, None when never recorded or unreadable."""
        try:
            size = read_json(self._record_path(etag)).get("size")
        except (OSError, ValueError, AttributeError):  # UnsafeName is a ValueError
            return None
        return size if isinstance(size, int) else None


def human_size(size: int) -> str:
    """Bytes in B, kB, MB or GB (decimal units, as the hub and its progress bars show them)."""
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
