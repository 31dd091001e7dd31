"""Fixtures for download/check tests: a fake hub, tiny GGUFs, an isolated cache, the real CLI."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .fake_hub import FakeHub, running_hub

REPO = "tiny-org/tiny-GGUF"
CLI = Path(sys.executable).with_name("llmstack")


@pytest.fixture(scope="session")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Four distinct tiny GGUF files (about 0.8 MB each), as bytes."""
    from llmstack.models.tiny_gguf import write_tiny_gguf

    directory = tmp_path_factory.mktemp("hub-files")
    return [write_tiny_gguf(directory / f"m{seed}.gguf", seed=seed).read_bytes()
            for seed in range(11, 15)]


@pytest.fixture(scope="session")
def big_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A tiny-architecture GGUF of about 34 MB: more than huggingface_hub's 10 MB read chunk,
    so a body cut halfway leaves whole chunks on disk for a resume to continue from."""
    from llmstack.models.tiny_gguf import write_tiny_gguf

    path = tmp_path_factory.mktemp("hub-big") / "big.gguf"
    return write_tiny_gguf(path, seed=20, dim=512, ff=2048, heads=8).read_bytes()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with running_hub() as fake:
        yield fake


@dataclass
class Project:
    """A temp project: its models.ini, an isolated HF cache, and the CLI run against both."""

    root: Path
    env: dict[str, str]

    @property
    def ini(self) -> Path:
        return self.root / ".llmstack" / "models.ini"

    @property
    def hub_cache(self) -> Path:
        return Path(self.env["HF_HOME"]) / "hub"

    @property
    def storage(self) -> Path:
        return self.hub_cache / ("models--" + REPO.replace("/", "--"))

    def write_ini(self, text: str) -> None:
        self.ini.parent.mkdir(parents=True, exist_ok=True)
        self.ini.write_text(text)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CLI), *args], cwd=self.root, env={**self.env, **env},
                              capture_output=True, text=True, timeout=60, check=False)

    def run_tty(self, *args: str, answer: tuple[bytes, bytes] | None = None,
                **env: str) -> tuple[int, str]:
        """Run the CLI with its output on a pseudo-terminal, as a user at a shell sees it; with
        ``answer`` (a prompt, a reply), its input too, the reply typed once the prompt shows.
        Fails after 90 s without output."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc = subprocess.Popen([str(CLI), *args], cwd=self.root, env={**self.env, **env},
                                stdin=slave if answer else subprocess.DEVNULL, stdout=slave,
                                stderr=slave)
        os.close(slave)
        seen = b""
        try:
            while select.select([master], [], [], 90)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                if answer is not None and answer[0] in seen:
                    os.write(master, answer[1])
                    answer = None
            else:
                proc.kill()
        finally:
            os.close(master)
        return proc.wait(60), seen.decode(errors="replace")

    def cache_files(self) -> list[Path]:
        """Every file (and link) under the HF cache, locks excluded."""
        return sorted(p for p in self.hub_cache.rglob("*")
                      if (p.is_file() or p.is_symlink()) and ".locks" not in p.parts)


def make_project(base: Path, hub: FakeHub) -> Project:
    """A project in ``base/proj`` with its caches in ``base``, downloading from ``hub``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE_", "LLMSTACK_")) and "proxy" not in k.lower()}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(base / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               LLMSTACK_CACHE_DIR=str(base / "llmstack-cache"), NO_PROXY="127.0.0.1",
               XDG_CACHE_HOME=str(base / "xdg"))
    root = base / "proj"
    root.mkdir(parents=True)
    return Project(root, env)


@pytest.fixture
def project(tmp_path: Path, hub: FakeHub) -> Project:
    return make_project(tmp_path, hub)


def tier_ini(*tiers: tuple[str, str], extra: str = "") -> str:
    """A models.ini with one GGUF tier per (name, file) in REPO."""
    return "".join(f"[{name}]\nhf_repo = {REPO}\nhf_file = {file}\n\n" for name, file in tiers) + extra


