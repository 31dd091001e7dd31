"""A loopback fake of the Hugging Face hub: just what ``hf_hub_download`` calls.

``HEAD|GET /{org}/{name}/resolve/{revision}/{file}`` answer with the hub's metadata headers
(``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag`` = sha256, ``X-Linked-Size``) and serve
``Range: bytes=N-`` as 206; a missing file of a known repo is a 404 that names the
commit, as the hub's is. Faults per file: announce a wrong size or sha256, send any
``ETag`` (after some honest HEADs), or cut the first body midway; ``commit`` may be any
string. ``GET /api/models/{org}/{name}/tree/{revision}`` lists a repo's files as the hub's
tree API does (what ``list_repo_tree`` and ``llmstack add`` read), or, for a repo in
``listings``, any pages given (each a JSON value, or raw bytes), linked by ``Link: <...>;
rel="next"`` as the hub's pagination is (``next_url`` overrides the link). It records every
request and the most GETs ever in flight; with
``hold_gets`` each GET waits (at most that long) for a third one to arrive before
sending its body, so a downloader that runs more than two at once is caught.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "c0ffee" + "0" * 34
_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)")
_TREE = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/?]+)(?:\?(?P<query>.*))?")


@dataclass
class HubFile:
    data: bytes
    announced_size: int | None = None
    """Lie about the size (X-Linked-Size) when set."""
    announced_sha256: str | None = None
    """Lie about the sha256 (etag) when set."""
    cut_once: bool = False
    """Close the connection halfway through the first GET's body."""
    etag_header: str | None = None
    """Send this ``ETag`` and ``X-Linked-Etag``, verbatim, when set..."""
    honest_heads: int = 0
    """...but only after this many HEADs were answered with the real ones."""
    heads: int = 0

    def etag(self, method: str) -> str:
        """The ETag header for this request (counting HEADs)."""
        honest = self.etag_header is None or self.heads < self.honest_heads
        self.heads += method == "HEAD"
        return f'"{self.sha256}"' if honest else str(self.etag_header)

    @property
    def sha256(self) -> str:
        return self.announced_sha256 or hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    """Lower-cased names."""


@dataclass
class FakeHub:
    url: str = ""
    files: dict[tuple[str, str], HubFile] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    token: str | None = None
    """When set, every request must carry ``Authorization: Bearer <token>``."""
    commit: str = COMMIT
    hold_gets: float = 0.0
    listings: dict[str, list[object]] = field(default_factory=dict)
    """Pages to answer a repo's file listing with, instead of its files."""
    next_url: str | None = None
    """The ``Link: rel="next"`` URL to send instead of the listing's own next page."""
    max_in_flight: int = 0
    released: bool = False
    """Set by :meth:`release`: held GETs go on at once."""
    _in_flight: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, repo: str, filename: str, data: bytes, **faults: object) -> HubFile:
        self.files[(repo, filename)] = hub_file = HubFile(data, **faults)  # type: ignore[arg-type]
        return hub_file

    def pages(self, repo: str) -> list[object]:
        """The listing of ``repo``: its ``listings`` pages, else its files on one page."""
        if repo in self.listings:
            return self.listings[repo]
        return [[{"type": "file", "oid": hashlib.sha1(f.data).hexdigest(), "size": len(f.data),
                  "path": name, "lfs": {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}}
                 for (owner, name), f in self.files.items() if owner == repo]]

    def gets(self, filename: str) -> list[Seen]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + filename)]

    def enter_get(self) -> None:
        with self._cond:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self._cond.notify_all()
            if self.hold_gets:
                self._cond.wait_for(lambda: self._in_flight > 2 or self.released,
                                    timeout=self.hold_gets)

    def release(self) -> None:
        with self._cond:
            self.released = True
            self._cond.notify_all()

    def leave_get(self) -> None:
        with self._cond:
            self._in_flight -= 1


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._resolve(body=False)

        def do_GET(self) -> None:
            tree = _TREE.fullmatch(self.path)
            if tree:
                return self._listing(tree["repo"], tree["query"] or "")
            self._resolve(body=True)
            return None

        def _admitted(self) -> bool:
            """Record the request; False (a 401 sent) when it lacks the hub's token."""
            headers = {k.lower(): v for k, v in self.headers.items()}
            hub.requests.append(Seen(self.command, self.path, headers))
            if hub.token and headers.get("authorization") != f"Bearer {hub.token}":
                self._error(401, "GatedRepo", "Access to this repo is restricted")
                return False
            return True

        def _listing(self, repo: str, query: str) -> None:
            if not self._admitted():
                return None
            if repo not in hub.listings and not any(owner == repo for owner, _ in hub.files):
                return self._error(404, "RepoNotFound", "Repository not found")
            pages = hub.pages(repo)
            index = int(re.search(r"cursor=(\d+)", query)[1]) if "cursor=" in query else 0  # type: ignore[index]
            page = pages[index]
            payload = page if isinstance(page, bytes) else json.dumps(page).encode()
            self.send_response(200)
            if index + 1 < len(pages) or hub.next_url:
                following = hub.next_url or f"{hub.url}/api/models/{repo}/tree/main?cursor={index + 1}"
                self.send_header("Link", f'<{following}>; rel="next"')
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return None

        def _error(self, status: int, code: str, message: str, commit: bool = False) -> None:
            payload = json.dumps({"error": message}).encode()
            self.send_response(status)
            if commit:
                self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _resolve(self, body: bool) -> None:
            if not self._admitted():
                return None
            match = _RESOLVE.fullmatch(self.path.split("?")[0])
            hub_file = hub.files.get((match["repo"], match["file"])) if match else None
            if hub_file is None:
                known = match is not None and any(repo == match["repo"] for repo, _ in hub.files)
                return self._error(404, "EntryNotFound", "Entry not found", commit=known)
            data = hub_file.data
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if body and ranged:
                start = int(ranged[1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("X-Repo-Commit", hub.commit)
            etag = hub_file.etag(self.command)
            self.send_header("ETag", etag)
            self.send_header("X-Linked-Etag", etag)
            self.send_header("X-Linked-Size", str(hub_file.announced_size or len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return None
            hub.enter_get()
            try:
                if hub_file.cut_once:
                    hub_file.cut_once = False
                    self.wfile.write(data[start:len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return None
                self.wfile.write(data[start:])
            finally:
                hub.leave_get()
            return None

    return Handler


@contextmanager
def running_hub() -> Iterator[FakeHub]:
    """A FakeHub listening on 127.0.0.1 (a free port) until the block ends."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.release()
        server.shutdown()
        server.server_close()
        thread.join()
