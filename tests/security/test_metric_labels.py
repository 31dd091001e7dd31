"""/metrics label values come from closed sets: whatever paths, models and statuses requests
bring, the series do not grow with them (a real `python -m swapper`)."""

from __future__ import annotations

import http.client
import uuid
from collections.abc import Callable

import pytest

from swapper.metrics import status_label
from tests.conftest import Server, fake_cmd, in_threads

Swapper = Callable[..., Server]


def series(server: Server) -> set[str]:
    """The sample lines' names and labels in /metrics."""
    status, _, body = server.get("/metrics")
    assert status == 200
    return {line.rpartition(" ")[0] for line in body.decode().splitlines()
            if line and not line.startswith("#")}


def hammer(port: int, targets: Callable[[], str], requests: int, threads: int = 3) -> None:
    def one_thread() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(requests // threads):
            conn.request("GET", targets())
            conn.getresponse().read()
        conn.close()

    in_threads(one_thread, threads)


def test_random_upstream_paths_add_at_most_ten_series(swapper: Swapper) -> None:
    server = swapper(f"models:\n  fast:\n    cmd: {fake_cmd()}\n")
    port = int(server.base.rsplit(":", 1)[1])
    assert server.get("/upstream/fast/health")[0] == 200  # loaded, and its series exist
    before = series(server)
    hammer(port, lambda: f"/upstream/fast/{uuid.uuid4().hex}/{uuid.uuid4().hex}", 3000)
    hammer(port, lambda: f"/upstream/{uuid.uuid4().hex}/x", 300)  # unknown models: 404
    added = series(server) - before
    assert len(added) <= 10, sorted(added)[:20]
    assert any('endpoint="other"' in s and 'model="fast"' in s for s in added)


def test_the_swappers_metrics_are_its_own(swapper: Swapper) -> None:
    """A program embedding the swapper registers its own series (llmstack's routing
    decisions); the swapper on its own names none of them."""
    server = swapper(f"models:\n  fast:\n    cmd: {fake_cmd()}\n")
    status, _, body = server.get("/metrics")
    names = {line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE")}
    assert status == 200 and "swapper_requests_total" in names
    assert all(name.startswith("swapper_") for name in names), sorted(names)


@pytest.mark.parametrize("status, label", [
    (200, "200"), (404, "404"), (499, "499"), (218, "2xx"), (599, "5xx"), (999, "other"),
    ("200", "other"), (None, "other"), (True, "other"),
])
def test_status_labels(status: object, label: str) -> None:
    assert status_label(status) == label


def test_hostile_event_fields_become_closed_labels() -> None:
    from swapper.metrics import _PerRequest

    counts = _PerRequest(lambda model: model == "fast", frozenset({"/v1/chat/completions"}))
    for model, path, status in ((None, ["x"], "200"), (["fast"], {"a": 1}, 10**9),
                                ("x" * 10**6, "/v1/chat/completions" + "x", 200),
                                ("fast", "/v1/chat/completions", 503)):
        counts.request_done({"model": model, "path": path, "status": status})
    assert set(counts.requests) == {("other", "other", "other"), ("other", "other", "200"),
                                    ("fast", "/v1/chat/completions", "503")}
    assert set(counts.latency) == {"other", "fast"}
