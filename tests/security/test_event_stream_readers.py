"""/api/events readers that read slowly or never: each lags behind a bounded ring, one that
falls too far behind gets a final ``dropped`` event, and the server's memory and latency do
not depend on them (a real `python -m swapper`, raw-socket readers)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import psutil

from swapper.events import RING_BYTES, RING_EVENTS
from tests.conftest import Server, fake_cmd, in_threads, wait_until

Swapper = Callable[..., Server]
CHAT = "/v1/chat/completions"
READERS = 200
MB = 1 << 20
CONFIG = f"models:\n  m:\n    cmd: {fake_cmd('--chunks', '2', '--log-lines', '4')}\n"


def silent_reader(port: int, receive_buffer: int = 4096,
                  path: str = "/api/events") -> socket.socket:
    """A client that asks for the event stream (or ``path``) and reads nothing yet (a small
    receive buffer by default)."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def traffic(port: int, requests: int, threads: int = 3) -> int:
    """About ``requests`` chat requests on keep-alive connections (each: an event and 4 log
    lines); returns how many were sent."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})

    def one_thread() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(requests // threads):
            conn.request("POST", CHAT, body, {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        conn.close()

    in_threads(one_thread, threads)
    return requests // threads * threads


class Probe:
    """Measures ``/health`` latency and the server's RSS, over and over, on a thread."""

    def __init__(self, port: int, pid: int) -> None:
        self.port, self.process = port, psutil.Process(pid)
        self.worst_health = 0.0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            started = time.perf_counter()
            conn.request("GET", "/health")
            resp = conn.getresponse()
            resp.read()
            self.worst_health = max(self.worst_health, time.perf_counter() - started)
            assert resp.status == 200
            self.peak_rss = max(self.peak_rss, self.rss())
            self._stop.wait(0.01)  # pacing, not synchronisation
        conn.close()

    @contextmanager
    def running(self) -> Iterator[Probe]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(30)


def test_readers_that_never_read_cost_bounded_memory_and_no_latency(swapper: Swapper) -> None:
    server = swapper(CONFIG)
    port = int(server.base.rsplit(":", 1)[1])
    traffic(port, 1100)  # warm up: the model runs, every bounded history is full
    probe = Probe(port, server.popen.pid)
    start = probe.rss()
    with probe.running():
        readers = [silent_reader(port) for _ in range(READERS)]
        try:
            traffic(port, 900)  # about 5 frames a request: far past every reader's ring
            wait_until(lambda: probe.peak_rss > 0, 10, "a measurement")
            grown = (probe.peak_rss - start) / MB
        finally:
            for sock in readers:
                sock.close()
        wait_until(lambda: probe.rss() - start < 10 * MB, 30,
                   f"RSS back within 10 MB of {start / MB:.0f} MB (now {probe.rss() / MB:.0f})")
    assert grown <= 50, f"RSS grew by {grown:.0f} MB with {READERS} silent readers"
    assert probe.worst_health < 0.1, f"/health took {probe.worst_health * 1000:.0f} ms"


def read_until_end(sock: socket.socket, timeout: float = 30) -> bytes:
    """Everything the server sends until the chunked response ends (or it closes)."""
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def sse_events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


def test_a_reader_that_falls_behind_gets_a_final_dropped_event(swapper: Swapper) -> None:
    server = swapper(CONFIG)
    port = int(server.base.rsplit(":", 1)[1])
    lagging = silent_reader(port)
    keeping_up = silent_reader(port, receive_buffer=0)
    received = bytearray()
    reading = threading.Event()
    reading.set()

    def keep_up() -> None:
        keeping_up.settimeout(0.1)
        while reading.is_set():
            with suppress(TimeoutError):
                received.extend(keeping_up.recv(65536))

    pump = threading.Thread(target=keep_up, daemon=True)
    pump.start()
    requests = traffic(port, RING_EVENTS // 2)  # 5 frames each: far more than the ring holds
    try:
        wait_until(lambda: bytes(received).count(b'"kind": "request_done"') == requests, 30,
                   "the reader that keeps up to see every request")
    finally:
        reading.clear()
        pump.join(10)
        assert b'"dropped"' not in received
    events = sse_events(read_until_end(lagging))
    lagging.close()
    keeping_up.close()
    assert events[0]["kind"] == "snapshot"
    assert events[-1]["kind"] == "dropped" and len(events) < requests
    assert f"{RING_EVENTS} events or {RING_BYTES // 1024} KiB" in events[-1]["reason"]


def test_a_log_follower_that_falls_behind_gets_a_last_line_saying_so(swapper: Swapper) -> None:
    server = swapper(CONFIG)
    port = int(server.base.rsplit(":", 1)[1])
    traffic(port, 3)  # the model runs: its log exists
    lagging = silent_reader(port, path="/logs/stream/m?no-history")
    wait_until(lambda: b"200 OK" in lagging.recv(4096, socket.MSG_PEEK), 10, "the stream")
    traffic(port, RING_EVENTS // 2)  # 4 lines each: more than the ring holds
    body = read_until_end(lagging)
    lagging.close()
    lines = body.split(b"\r\n0\r\n")[0].split(b"\n")
    assert any(line.startswith(b"slot 0: request") for line in lines)
    assert b"[swapper] this follower fell behind" in body[-300:]
