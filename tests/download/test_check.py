"""``llmstack check``: present / missing / drifted, offline, through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmstack.config.ini import parse_stack
from llmstack.models.hf_cache import HubCache, tier_file
from llmstack.settings import Settings

from .conftest import REPO, Project, tier_ini
from .fake_hub import COMMIT, FakeHub

OTHER_REPO = "other-org/other-GGUF"


def _rows(output: str) -> dict[str, str]:
    """tier -> its row of the table."""
    return {line.split()[0]: line for line in output.splitlines()[1:] if not line.startswith("[")}


def test_check_reports_present_missing_and_drifted_offline(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "a.gguf", ggufs[0])
    hub.add(REPO, "b.gguf", ggufs[1])
    hub.add(OTHER_REPO, "c.gguf", ggufs[2])
    project.write_ini(
        tier_ini(("a", "a.gguf"), ("b", "b.gguf"), ("d", "d.gguf"))
        + f"[c]\nhf_repo = {OTHER_REPO}\nhf_file = c.gguf\n\n"
        + "[opus]\nmodel = anthropic/claude-opus-4\n\n[gpt]\nmodel = openai/gpt-5\n")
    assert project.run("download", "a", "b", "c").returncode == 0
    with (project.storage / "snapshots" / COMMIT / "b.gguf").resolve().open("ab") as blob:
        blob.write(b"tail")  # the file no longer has the size the hub announced
    other = project.hub_cache / ("models--" + OTHER_REPO.replace("/", "--"))
    (other / "refs" / "main").write_text("f" * 40)  # main moved on; c is cached at the old commit
    before = len(hub.requests)
    secret = "sk-ant-very-secret-value"
    done = project.run("check", HF_HUB_OFFLINE="1", ANTHROPIC_API_KEY=secret)
    assert len(hub.requests) == before  # nothing asked of the hub
    assert done.returncode == 1, done.stdout + done.stderr
    rows = _rows(done.stdout)
    assert " present " in rows["a"] and "805.9 kB, size ok" in rows["a"]
    assert " drifted " in rows["b"]
    assert f"{len(ggufs[1]) + 4} bytes on disk, the hub announced {len(ggufs[1])}" in rows["b"]
    assert " drifted " in rows["c"] and f"cached at revision {COMMIT[:8]} but main is ffffffff" in rows["c"]
    assert " missing " in rows["d"] and "run: llmstack download d" in rows["d"]
    assert " hosted " in rows["opus"] and "anthropic/claude-opus-4" in rows["opus"]
    assert "credentials: ANTHROPIC_API_KEY set" in rows["opus"]
    assert " no credentials " in rows["gpt"] and "export OPENAI_API_KEY" in rows["gpt"]
    assert secret not in done.stdout + done.stderr
    assert "[!] 4 of 6 tiers not ready" in done.stdout


def test_verify_hashes_the_files_and_catches_same_size_corruption(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "a.gguf", ggufs[0])
    project.write_ini(tier_ini(("a", "a.gguf")))
    assert project.run("download").returncode == 0
    ok = project.run("check-models", "--verify")
    assert ok.returncode == 0 and "sha256 ok" in ok.stdout and "[OK] all 1 tiers ready" in ok.stdout
    blob = (project.storage / "snapshots" / COMMIT / "a.gguf").resolve()
    blob.write_bytes(bytes(reversed(blob.read_bytes())))
    assert project.run("check").returncode == 0  # size unchanged: only hashing sees it
    bad = project.run("check", "--verify")
    assert bad.returncode == 1 and "sha256 differs from the hub's" in _rows(bad.stdout)["a"]


def test_check_follows_the_channel_and_names_what_the_cache_has(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "now.gguf", ggufs[0])
    project.write_ini(tier_ini(("fast", "now.gguf")).replace(
        "hf_file = now.gguf", "hf_file = now.gguf\nhf_file_next = later.gguf"))
    assert project.run("download").returncode == 0
    assert project.run("check").returncode == 0
    queued = project.run("check", "--channel", "next")
    assert queued.returncode == 1
    row = _rows(queued.stdout)["fast"]
    assert " next " in row and " missing " in row
    assert "run: llmstack download fast --channel next; the cache has now.gguf" in row
    (project.root / ".llmstack" / "default-channel").write_text("next\n")  # `install --next`
    pinned = project.run("check")
    assert pinned.returncode == 1 and " next " in _rows(pinned.stdout)["fast"]
    assert project.run("check", "--channel", "current").returncode == 0  # the flag wins


def test_check_and_help_do_not_import_huggingface_hub(project: Project) -> None:
    project.write_ini(tier_ini(("a", "a.gguf")))
    probe = ("import sys; from llmstack.cli.main import main; main(['check']); "
             "print('huggingface_hub' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=project.root, env=project.env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.splitlines()[-1] == "False", out.stdout + out.stderr


def test_the_cache_lookup_prefers_the_refs_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    storage = tmp_path / "models--org--repo"
    for commit, content in (("a" * 40, b"old"), ("b" * 40, b"new")):
        (storage / "blobs").mkdir(parents=True, exist_ok=True)
        (storage / "blobs" / content.decode()).write_bytes(content)
        (storage / "snapshots" / commit).mkdir(parents=True)
        (storage / "snapshots" / commit / "m.gguf").symlink_to(storage / "blobs" / content.decode())
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text("b" * 40)
    stack = parse_stack("[t]\nhf_repo = org/repo\nhf_file = m.gguf\n\n"
                        "[u]\nhf_repo = org/none\nhf_file = m.gguf\n")
    file = tier_file(stack.tiers[0])
    assert file is not None
    found = HubCache(Settings.read().hub_cache).find_cached(file)
    assert found is not None and found.etag == "new" and not found.other_revision
    assert HubCache(Settings.read().hub_cache).local_files(stack) == {
        "t": storage / "snapshots" / ("b" * 40) / "m.gguf", "u": None}
    (storage / "blobs" / "new").unlink()  # a dangling link is not a file: the old revision serves
    found = HubCache(Settings.read().hub_cache).find_cached(file)
    assert found is not None and found.etag == "old" and found.other_revision
