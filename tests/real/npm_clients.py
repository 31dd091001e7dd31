"""Coding-agent clients from the npm registry, pinned and installed once into the llmstack
cache (``<cache>/<name>/<version>``), for the tests that run them against a real stack.

Each pin names the exact version and the sha512 integrity of the tarballs it installs (the
wrapper package, and its linux-x64 platform package where that is what runs here): npm
checks each tarball against the registry's integrity, and the install is refused unless
the lock file it writes (``node_modules/.package-lock.json``) names ours. The install
happens in a scratch directory renamed into place, so a broken one is never cached.

Claude Code's pitfall: its ``bin/claude.exe`` is a stub until the package's ``postinstall``
hard-links the platform binary over it; with ``--ignore-scripts`` (or
``npm_config_ignore_scripts=true``) ``claude --version`` says "claude native binary not
installed". Hence the ``--version`` check after every install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmstack.settings import Settings


@dataclass(frozen=True)
class NpmClient:
    """One client: ``package@version``, its ``bin`` and the integrity of what it installs."""

    name: str
    """The cache directory's name."""
    package: str
    version: str
    bin: str
    integrity: dict[str, str] = field(default_factory=dict)
    """Lock-file key (``node_modules/<package>``) -> sha512; the wrapper's is required."""

    @property
    def prefix(self) -> Path:
        return Settings.read().cache_dir / self.name / self.version

    def binary(self) -> Path:
        """The installed client (installed now if it is not yet); fails under CI and skips
        elsewhere when npm is missing."""
        binary = self.prefix / "node_modules" / ".bin" / self.bin
        if not binary.exists():
            self._install()
        self._check(self.prefix)
        return binary

    def _install(self) -> None:
        npm = shutil.which("npm")
        if npm is None:
            (pytest.fail if os.environ.get("CI") else pytest.skip)(
                f"npm is needed to install {self.package}")
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{self.version}-", dir=self.prefix.parent))
        try:
            done = subprocess.run([npm, "install", "--prefix", str(scratch), "--no-audit",
                                   "--no-fund", "--save-exact", f"{self.package}@{self.version}"],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode:
                pytest.fail(f"npm install {self.package}@{self.version} failed (the registry "
                            f"must be reachable the first time):\n{done.stderr[-2000:]}")
            self._check(scratch)
            try:
                os.rename(scratch, self.prefix)
            except OSError:  # another session installed it meanwhile
                if not self.prefix.exists():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _check(self, prefix: Path) -> None:
        """The lock file names our integrity for every pinned package it has (the wrapper
        always), and ``--version`` names our version."""
        lock = json.loads((prefix / "node_modules" / ".package-lock.json").read_text())
        installed = lock.get("packages", {})
        wrapper = f"node_modules/{self.package}"
        assert wrapper in installed, f"{self.package} is not in {prefix}"
        for key, integrity in self.integrity.items():
            if key in installed or key == wrapper:
                got = installed[key].get("integrity")
                assert got == integrity, f"{key}: integrity {got}, pinned {integrity}"
        version = subprocess.run([str(prefix / "node_modules" / ".bin" / self.bin), "--version"],
                                 capture_output=True, text=True, timeout=60)
        assert self.version in version.stdout, (version.stdout, version.stderr)


OPENCODE = NpmClient("opencode", "opencode-ai", "1.18.33", "opencode", {
    "node_modules/opencode-ai": "sha512-58P1ffLRXiAY4QeoABqUjqf6DEzm1ihpovvn9Ad+oOLbLiwK/rf88wruT9"
                                "IATJ7AtNjmi8iA7pC8tN4o5y799Q==",
    "node_modules/opencode-linux-x64": "sha512-q/t/3p2CTxOT9y2kvjesb/LZab2+1eqlhhWA02Be6mjTtmYtNB"
                                       "cBsrI5yDo4Fw7ZSPBW2oyMIGMNRqiKQjiAWw==",
})
CLAUDE_CODE = NpmClient("claude-code", "@anthropic-ai/claude-code", "2.1.332", "claude", {
    "node_modules/@anthropic-ai/claude-code": "sha512-tvSh6bLvEbd97APD31AnojOrRC3AmcRj5R8sF8QIQ"
                                              "itu3x2ucOb1kKmTkGDw41kjva+CGJfpkt+wYouk6yv56Q==",
    "node_modules/@anthropic-ai/claude-code-linux-x64": "sha512-f4JWhzwYutJIHScC7/dYOPX6s28tt7Z"
                                                        "ADhsOi8zwOHq5fFPEuUeChh2NMfinSg0GrUck"
                                                        "YxaeebC4h0DqiKzLcw==",
})
"""2.1.332 declares node >= 22; on node 20 npm warns (EBADENGINE) and it works: node only runs
its postinstall, the client is a native binary."""
CODEX = NpmClient("codex", "@openai/codex", "0.171.0", "codex", {
    "node_modules/@openai/codex": "sha512-1IOFzL2Xg86tLdw6kDo3GoKbkQENgQi7TI6rlEvN132R7ngSw7SNOIQ"
                                  "oTcnKzSZZ8kf9N9GynCweSoaFbqk2Eg==",
    "node_modules/@openai/codex-linux-x64": "sha512-l66NZkQgdk2C3pbcfULDz42yEUB581MVA6I+Y43Wp4OIq"
                                            "Ey73HCdmZ0GTjeAHY2ycuH4N00d9VsLrwT1jxshTw==",
})
