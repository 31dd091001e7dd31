"""``llmstack download``: fetch tiers' GGUFs into the Hugging Face cache, verified.

Downloads go through huggingface_hub (``hf_hub_download``: its cache layout, locks,
per-file progress bar, Range-resume of an interrupted transfer, and hf_xet when the hub
serves a file from Xet storage). At most :data:`MAX_PARALLEL` files are in flight. The
size and, for LFS files, the sha256 announced by the hub (``X-Linked-Size`` /
``X-Linked-Etag``) are checked; a file that fails is removed from the cache, so nothing
half-right is left where ``serve`` would load it. ``HF_TOKEN`` comes from the environment
(:attr:`llmstack.settings.Settings.hf_token`; huggingface_hub falls back to a ``hf auth
login`` token) and is never printed.

huggingface_hub builds cache paths from the hub's answers (``blobs/<etag>``,
``.locks/<repo>/<etag>.lock``, ``snapshots/<commit>/...``, ``.no_exist/<commit>/...``)
without checking the etag or, for ``.no_exist``, the commit. So every answer to its
metadata (HEAD) requests passes :func:`_check_hub_answer` first, installed in its HTTP
client: an etag or commit that is not a hub name fails the file before anything is written.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TextIO

from ..config.hub_names import UnsafeName, check_commit, check_etag_header
from ..config.schema import Stack
from ..errors import UserError
from ..settings import Settings
from .hf_cache import Channel, HubCache, HubSizes, TierFile, human_size, sha256_of, tier_files

MAX_PARALLEL = 2
Outcome = Literal["downloaded", "present", "failed"]


@dataclass(frozen=True)
class Result:
    file: TierFile
    outcome: Outcome
    detail: str = ""
    tiers: tuple[str, ...] = ()
    """Every tier that serves the file (set by :func:`download`)."""


class VerifyError(Exception):
    """The downloaded bytes do not match the hub's metadata."""


def _discard(pointer: Path) -> None:
    """Remove a snapshot entry and the blob it points to (checked by ``in_storage`` first)."""
    blob = pointer.resolve()
    pointer.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _check_hub_answer(response: Any) -> None:
    """An httpx response hook: a metadata (HEAD) answer's ``X-Repo-Commit`` must be a commit
    hash and, when it names one, its ``X-Linked-Etag`` (else ``ETag``) a blob id; else
    UnsafeName, which huggingface_hub passes on before it uses either."""
    if response.request.method != "HEAD":
        return  # huggingface_hub takes names from its HEAD answers only
    commit = response.headers.get("X-Repo-Commit")
    if commit is None:
        return  # not a hub file answer: huggingface_hub refuses it without a commit
    check_commit(commit, "the hub's commit")
    etag = response.headers.get("X-Linked-Etag") or response.headers.get("ETag")
    if etag is not None:
        check_etag_header(etag)


_guard_lock = threading.Lock()
_guarded = False


def _guard_hub_answers() -> None:
    """Have huggingface_hub's HTTP client (each one it makes) run :func:`_check_hub_answer`."""
    global _guarded
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    with _guard_lock:
        if _guarded:
            return
        make = _http.default_client_factory

        def guarded_client() -> Any:
            client = make()
            hooks = client.event_hooks
            client.event_hooks = {**hooks, "response": [*hooks["response"], _check_hub_answer]}
            return client

        set_client_factory(guarded_client)
        _guarded = True


def _fetch(file: TierFile, label: str, run: _Run) -> Result:
    """Fetch and verify one file; ``label``: the tiers it serves, for messages."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url

    _guard_hub_answers()
    if constants.HF_HUB_OFFLINE:
        cached = run.hub.find_cached(file)
        if cached is None:
            return Result(file, "failed", "not in the cache, and HF_HUB_OFFLINE is set")
        return Result(file, "present", f"{human_size(cached.size)}, offline: not compared with the hub")
    token = run.token
    meta = get_hf_file_metadata(hf_hub_url(file.repo, file.filename, revision=file.revision),
                                token=token)
    if not meta.etag or meta.size is None:
        return Result(file, "failed", "the hub sent no etag or size for this file")
    blob = run.hub.blob_path(file.repo, meta.etag)
    present = blob.is_file() and blob.stat().st_size == meta.size
    if blob.exists() and not present:
        blob.unlink()  # a copy of the wrong size: fetch it again
    if not present:
        run.say(f"[*] {label} ({file.channel}): {file.repo} / {file.filename} "
                f"({human_size(meta.size)})")
    run.writing.add(blob)
    try:
        pointer = Path(hf_hub_download(file.repo, file.filename, revision=file.revision, token=token,
                                       tqdm_class=progress_bar(f"{label}: {file.filename}")))
    finally:
        run.writing.discard(blob)
    size = run.hub.in_storage(file.repo, pointer).stat().st_size
    if size != meta.size:
        _discard(pointer)
        raise VerifyError(f"size mismatch: got {size} bytes, the hub says {meta.size}; removed")
    if not present and len(meta.etag) == 64:  # an LFS file: its etag is the sha256
        digest = sha256_of(pointer)
        if digest != meta.etag:
            _discard(pointer)
            raise VerifyError(f"sha256 mismatch: got {digest}, the hub says {meta.etag}; removed")
    run.sizes.record(meta.etag, meta.size)
    if present:
        return Result(file, "present", human_size(meta.size))
    return Result(file, "downloaded", f"{human_size(meta.size)}, "
                  + ("sha256 verified" if len(meta.etag) == 64 else "size verified"))


def progress_bar(label: str) -> type[Any]:
    """huggingface_hub's bar (shown on a terminal, honours HF_HUB_DISABLE_PROGRESS_BARS), labelled."""
    from huggingface_hub.utils.tqdm import tqdm

    class Bar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["desc"] = label
            super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    return Bar


class _Run:
    """One ``download`` call: the caches, the token, its output (one line at a time, token
    scrubbed) and the blobs being written, whose partial files are removed on Ctrl-C."""

    def __init__(self, settings: Settings, out: TextIO) -> None:
        self.hub = HubCache(settings.hub_cache)
        self.sizes = HubSizes.under(settings.cache_dir)
        self.token = settings.hf_token
        self.out = out
        self.lock = threading.Lock()
        self.writing: set[Path] = set()

    def scrub(self, text: str) -> str:
        """``text`` with the token (if any) masked: nothing we print may carry it."""
        return text.replace(self.token, "***") if self.token else text

    def say(self, line: str) -> None:
        with self.lock:
            print(self.scrub(line), file=self.out, flush=True)

    def remove_partials(self) -> None:
        """huggingface_hub's ``<etag>.<id>.incomplete`` files of the transfers in flight."""
        for blob in list(self.writing):
            for partial in blob.parent.glob(f"{blob.name}.*.incomplete"):
                partial.unlink(missing_ok=True)


def describe(exc: BaseException, token: str | None) -> str:
    """One line for a failed file, with the fix when there is an obvious one."""
    from huggingface_hub import errors

    hint = "" if token else " (if it is gated or private, export HF_TOKEN)"
    if isinstance(exc, VerifyError):
        return str(exc)
    if isinstance(exc, UnsafeName):
        return f"refused: {exc}"
    if isinstance(exc, errors.GatedRepoError):
        return "gated repository: accept its terms on the hub" + (hint or ", then retry")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return "repository not found" + hint
    if isinstance(exc, errors.RevisionNotFoundError):
        return "revision not found in the repository"
    if isinstance(exc, errors.EntryNotFoundError):
        return "file not found in the repository (check hf_file / hf_file_next)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if type(exc).__module__.startswith(("httpx", "httpcore")):  # the transport huggingface_hub uses
        from huggingface_hub import constants

        return f"cannot reach {constants.ENDPOINT}: {first}"
    return first if isinstance(exc, (errors.HfHubHTTPError, OSError)) else f"{type(exc).__name__}: {first}"


def by_file(files: list[TierFile]) -> list[tuple[TierFile, tuple[str, ...]]]:
    """Each distinct file (repo, name, revision) once, in order, with every tier serving it."""
    tiers: dict[tuple[str, str, str], list[TierFile]] = {}
    for file in files:
        tiers.setdefault((file.repo, file.filename, file.revision), []).append(file)
    return [(same[0], tuple(f.tier for f in same)) for same in tiers.values()]


def pending(stack: Stack, settings: Settings) -> list[tuple[str, float | None]]:
    """The GGUF files of ``stack`` in no snapshot of the local cache (offline): each as the
    tiers serving it (``a, b``) and models.ini's ``size_gb`` for it (None: not given)."""
    hub = HubCache(settings.hub_cache)
    found = []
    for file, tiers in by_file(tier_files(stack)):
        if hub.find_cached(file) is None:
            sizes = [t.size_gb for t in stack.tiers if t.name in tiers and t.size_gb is not None]
            found.append((", ".join(tiers), sizes[0] if sizes else None))
    return found


def download(files: list[TierFile], settings: Settings, out: TextIO = sys.stderr) -> list[Result]:
    """Download ``files``, at most MAX_PARALLEL at once; one Result per distinct file, in order
    (a file two tiers share is fetched once, reported under both).

    Ctrl-C returns at once (KeyboardInterrupt): the workers are daemon threads that die with
    the process, and the partial files of the transfers in flight are removed first
    (huggingface_hub >= 1.0 resumes within a transfer, never across runs).
    """
    distinct = by_file(files)
    run = _Run(settings, out)
    results: list[Result | None] = [None] * len(distinct)
    slots = threading.BoundedSemaphore(MAX_PARALLEL)

    def one(index: int, file: TierFile, tiers: tuple[str, ...]) -> None:
        label = ", ".join(tiers)
        with slots:
            try:
                result = _fetch(file, label, run)
            except Exception as exc:  # one file's failure must not stop the others
                result = Result(file, "failed", describe(exc, run.token))
        mark = {"downloaded": "[OK]", "present": "[=]", "failed": "[!]"}[result.outcome]
        verb = {"downloaded": "downloaded", "present": "already present", "failed": "FAILED"}
        run.say(f"{mark} {label} ({file.channel}): {file.filename} {verb[result.outcome]}"
                + (f" ({result.detail})" if result.detail else ""))
        results[index] = replace(result, tiers=tiers)

    workers = [threading.Thread(target=one, args=(i, f, tiers), name=f"download-{f.tier}",
                                daemon=True)
               for i, (f, tiers) in enumerate(distinct)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        run.remove_partials()
        raise
    return [r for r in results if r is not None]


def counts(results: list[Result]) -> str:
    """``N downloaded, N already present, N failed``."""
    n = {o: sum(r.outcome == o for r in results) for o in ("downloaded", "present", "failed")}
    return f"{n['downloaded']} downloaded, {n['present']} already present, {n['failed']} failed"


def download_tiers(stack: Stack, names: list[str], channel: Channel, settings: Settings) -> int:
    """The ``download`` verb: the named tiers (names or aliases; all when empty); exit status
    0, or a UserError (an unknown tier; a file that failed)."""
    chosen = [stack.tier(n) for n in names]
    unknown = [n for n, t in zip(names, chosen, strict=True) if t is None]
    if unknown:
        known = ", ".join(t.name for t in stack.tiers)
        raise UserError(f"unknown tier: {', '.join(unknown)} (tiers: {known})", 2)
    wanted = [t.name for t in chosen if t is not None] if names else None
    asked = [t for t in stack.tiers if wanted is None or t.name in wanted]
    hosted = [t.name for t in asked if t.backend != "gguf"]
    if hosted:
        print(f"[=] hosted, nothing to download: {', '.join(hosted)}", file=sys.stderr)
    local = [f"{t.name} ({t.gguf_path})" for t in asked if t.backend == "gguf" and t.gguf_path]
    if local:
        print(f"[=] local files (gguf_path), nothing to download: {', '.join(local)}",
              file=sys.stderr)
    files = tier_files(stack, channel, wanted)
    if not files:
        print("[=] no hub files to download", file=sys.stderr)
        return 0
    results = download(files, settings)
    failed = [t for r in results if r.outcome == "failed" for t in r.tiers]
    if failed:
        retry = " ".join(dict.fromkeys(failed))
        raise UserError(f"{counts(results)} (retry: llmstack download {retry})")
    print(f"[OK] {counts(results)}", file=sys.stderr)
    return 0
