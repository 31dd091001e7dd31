"""A hostile hub or models.ini cannot make ``llmstack download`` (real CLI, real
huggingface_hub, a loopback hub) write, rename or delete anything outside the caches:
every ETag, commit, repo id and file name that would become part of a path is refused
with one line naming the tier and the value.

The caches live four folders down (``a/b/c/home``) so that whatever a ``../../../..``
reaches is still inside the test's folder, where a snapshot of every name, kind, size,
content and mtime shows any change."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmstack.settings import Settings
from tests.download.conftest import REPO, Project, make_project, tier_ini
from tests.download.fake_hub import FakeHub, running_hub

DATA = b"GGUF" + bytes(range(256)) * 4
VICTIM = b"precious: must survive"
CACHES = ("hf", "llmstack-cache", "xdg")


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with running_hub() as fake:
        yield fake


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Where the caches and the project live; ``home/outside/victim.txt`` beside them."""
    home = tmp_path / "a" / "b" / "c" / "home"
    (home / "outside").mkdir(parents=True)
    (home / "outside" / "victim.txt").write_bytes(VICTIM)
    return home


@pytest.fixture
def box(home: Path, hub: FakeHub) -> Project:
    return make_project(home, hub)


def snapshot(top: Path, home: Path) -> dict[str, tuple[str, int, str, int]]:
    """Every entry under ``top`` but the caches: kind, size, sha256, mtime."""
    caches = [home / name for name in CACHES]
    seen = {}
    for path in sorted(top.rglob("*")):
        if any(path.is_relative_to(c) for c in caches):
            continue
        st = path.lstat()
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else ""
        seen[str(path.relative_to(top))] = (kind, st.st_size if kind == "file" else 0, digest,
                                            st.st_mtime_ns if kind != "dir" else 0)
    return seen


def refused_line(stderr: str, tier: str, value: str) -> None:
    """One ``[!] tier ... FAILED (refused: ...)`` line that quotes ``value``."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"[!] {tier} ")]
    assert len(lines) == 1, stderr
    assert "FAILED (refused: " in lines[0] and repr(value) in lines[0], stderr
    assert "Traceback" not in stderr


def _escapes(home: Path) -> dict[str, str]:
    """ETag values aiming at the victim from the repo's ``blobs`` folder."""
    return {
        "dotdot": '"../../../../outside/victim.txt"',
        "absolute": f'"{home}/outside/victim.txt"',
        "weak-dotdot": 'W/"../../../../outside/victim.txt"',
        "separator": '"ab/cd"',
        "backslash": '"..\\..\\outside"',
        "new-folder": '"../../../../outside/new/victim.txt"',
    }


@pytest.mark.parametrize("case", ["dotdot", "absolute", "weak-dotdot", "separator",
                                  "backslash", "new-folder"])
@pytest.mark.parametrize("honest_heads", [0, 1], ids=["every-head", "after-our-check"])
def test_a_hostile_etag_writes_and_deletes_nothing(
        box: Project, home: Path, hub: FakeHub, tmp_path: Path, case: str,
        honest_heads: int) -> None:
    """``after-our-check``: the first HEAD (ours) is honest, huggingface_hub's is not."""
    etag = _escapes(home)[case]
    hub.add(REPO, "fast.gguf", DATA, etag_header=etag, honest_heads=honest_heads,
            announced_size=len(DATA) + 1)  # a size mismatch once made llmstack delete "the blob"
    box.write_ini(tier_ini(("code-fast", "fast.gguf")))
    before = snapshot(tmp_path, home)
    done = box.run("download")
    assert done.returncode == 1, done.stderr
    refused_line(done.stderr, "code-fast", etag)
    assert snapshot(tmp_path, home) == before
    assert (home / "outside" / "victim.txt").read_bytes() == VICTIM
    assert not list(box.storage.glob("blobs/*")), "no blob for a refused etag"


@pytest.mark.parametrize("commit", ["../../../../outside/new", "{home}/outside/abs",
                                    "c0ffee/../../../../../outside", "C0FFEE" + "0" * 34])
@pytest.mark.parametrize("present", [True, False], ids=["file", "missing-file"])
def test_a_hostile_commit_writes_nothing(box: Project, home: Path, hub: FakeHub,
                                         tmp_path: Path, commit: str, present: bool) -> None:
    """A missing file's 404 names the commit too: huggingface_hub records the absence
    under ``.no_exist/<commit>/<file>``."""
    hub.commit = commit.format(home=home)
    hub.add(REPO, "fast.gguf" if present else "other.gguf", DATA)
    box.write_ini(tier_ini(("code-fast", "fast.gguf")))
    before = snapshot(tmp_path, home)
    done = box.run("download")
    assert done.returncode == 1, done.stderr
    refused_line(done.stderr, "code-fast", hub.commit)
    assert snapshot(tmp_path, home) == before
    assert not box.storage.exists() or not any(
        p.is_file() for p in box.storage.rglob("*")), "nothing cached from a refused answer"


@pytest.mark.parametrize("key, value, message", [
    ("hf_file", "../../../../outside/victim.txt", "has a '..' part"),
    ("hf_file", "sub/../../x.gguf", "has a '..' part"),
    ("hf_file", "/etc/passwd", "is an absolute path"),
    ("hf_file", "..\\..\\x.gguf", "has a backslash"),
    ("hf_file", "./x.gguf", "has an empty or '.' part"),
    ("hf_file", "a//x.gguf", "has an empty or '.' part"),
    ("hf_file", "C:x.gguf", "has a drive"),
    ("hf_file", "x" * 256 + ".gguf", "has a part longer than 255 bytes"),
    ("hf_file_next", "../victim.txt", "has a '..' part"),
    ("hf_repo", "../outside", "is not a hub repo id"),
    ("hf_repo", "org/name/extra", "is not a hub repo id"),
    ("hf_repo", "/abs", "is not a hub repo id"),
    ("hf_repo", "org--x/name", "is not a hub repo id"),
    ("hf_repo", "org/.hidden", "is not a hub repo id"),
    ("hf_repo", "org/x" + "y" * 96, "is not a hub repo id"),
    ("hf_repo_next", "a\\b", "is not a hub repo id"),
])
def test_a_path_in_models_ini_is_a_file_line_error_and_asks_nothing(
        box: Project, home: Path, hub: FakeHub, tmp_path: Path, key: str, value: str,
        message: str) -> None:
    hub.add(REPO, "fast.gguf", DATA)
    keys = {"hf_repo": REPO, "hf_file": "fast.gguf", key: value}
    box.write_ini("[code-fast]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))
    line = 2 + list(keys).index(key)
    before = snapshot(tmp_path, home)
    done = box.run("download")
    assert done.returncode == 2, done.stderr
    assert f"models.ini:{line}: [code-fast] {key}: {value!r}"[:120] in done.stderr, done.stderr
    assert message in done.stderr
    assert hub.requests == []
    assert snapshot(tmp_path, home) == before


def test_an_honest_hub_still_downloads_into_the_cache(box: Project, hub: FakeHub) -> None:
    """The checks refuse only what is not a hub name: sha256 and git-sha1 etags, weak or not."""
    hub.add(REPO, "lfs.gguf", DATA)
    hub.add(REPO, "small.json", b"{}", etag_header='W/"' + "ab" * 20 + '"', announced_size=2)
    box.write_ini(tier_ini(("lfs", "lfs.gguf"), ("small", "small.json")))
    done = box.run("download")
    assert done.returncode == 0, done.stderr
    assert "[OK] 2 downloaded" in done.stderr
    assert (box.storage / "blobs" / ("ab" * 20)).read_bytes() == b"{}"


def test_hub_names_are_checked_before_huggingface_hub_is_asked(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """The cache's own path builders refuse what is not a hub name (``UnsafeName``)."""
    from llmstack.config.hub_names import UnsafeName
    from llmstack.models import hf_cache

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("LLMSTACK_CACHE_DIR", str(tmp_path / "llmstack"))
    sizes = hf_cache.HubSizes.under(Settings.read().cache_dir)
    for bad in ("../x", "/abs", "a/b", "", "g" * 64):
        with pytest.raises(UnsafeName):
            hf_cache.HubCache(Settings.read().hub_cache).blob_path(REPO, bad)
        with pytest.raises(UnsafeName):
            sizes.record(bad, 1)
        assert sizes.recorded(bad) is None
    with pytest.raises(UnsafeName):
        hf_cache.HubCache(Settings.read().hub_cache).repo_dir("../../x")
    assert not (tmp_path / "llmstack").exists() and not (tmp_path / "x").exists()
    assert os.listdir(tmp_path) == []


def test_the_cache_never_hands_out_a_file_outside_the_repo(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    """What ``serve`` gives llama-server: a snapshot link to outside, a ref naming a path, a
    file not downloaded - never a path outside the repo's storage."""
    from llmstack.config.ini import parse_stack
    from llmstack.models.hf_cache import HubCache, tier_file
    from llmstack.serving.swapper_config import build_swapper_config

    hub_cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    secret = tmp_path / "outside" / "secret.gguf"
    secret.parent.mkdir()
    secret.write_bytes(b"not yours")
    storage = hub_cache / "models--org--repo"
    snapshot = storage / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "m.gguf").symlink_to(secret)
    (storage / "blobs").mkdir()
    (storage / "blobs" / "escape").symlink_to(secret)
    (snapshot / "n.gguf").symlink_to("../../blobs/escape")  # a link inside, to a link outside
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text("../../../outside")
    (tmp_path / "outside" / "m.gguf").write_bytes(b"not yours either")
    stack = parse_stack("[t]\nhf_repo = org/repo\nhf_file = m.gguf\n\n"
                        "[u]\nhf_repo = org/repo\nhf_file = n.gguf\n\n"
                        "[v]\nhf_repo = org/repo\nhf_file = sub/missing.gguf\n")
    for tier in stack.tiers:
        file = tier_file(tier)
        assert file is not None and HubCache(Settings.read().hub_cache).find_cached(file) is None
    assert HubCache(Settings.read().hub_cache).local_files(stack) == {"t": None, "u": None, "v": None}
    hub = HubCache(Settings.read().hub_cache)
    config = build_swapper_config(stack, "/bin/llama-server", hub.local_files(stack), hub)
    for name in ("t", "u", "v"):
        argv = list(config.models[name].cmd)
        model = Path(argv[argv.index("-m") + 1])
        assert model.is_absolute() and model.is_relative_to(storage), argv
        assert not model.exists()


@pytest.mark.parametrize("env", [{"HF_HUB_CACHE": "{tmp}/$NAME/hc"}, {"HUGGINGFACE_HUB_CACHE": "~/legacy"},
                                 {"HF_HOME": "{tmp}/home"}, {"XDG_CACHE_HOME": "{tmp}/xdg"}, {}])
def test_the_cache_root_is_where_huggingface_hub_writes(env: dict[str, str], tmp_path: Path) -> None:
    """What ``in_storage`` measures against must be huggingface_hub's own root."""
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("HF_", "HUGGINGFACE_")) and k != "XDG_CACHE_HOME"}
    probe = ("import os; from huggingface_hub import constants; from llmstack.settings import "
             "Settings; print(os.path.abspath(constants.HF_HUB_CACHE)); print(Settings.read().hub_cache)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**clean, "NAME": "n", **{k: v.format(tmp=tmp_path) for k, v in env.items()}})
    theirs, ours = out.stdout.splitlines()
    assert theirs == ours
