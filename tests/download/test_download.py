"""``llmstack download`` through the real CLI and real huggingface_hub against a fake hub."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
from pathlib import Path

from ..conftest import free_port, wait_until
from .conftest import CLI, REPO, Project, tier_ini
from .fake_hub import COMMIT, FakeHub


def test_download_shows_progress_and_lands_verified_in_the_hf_cache(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "fast.gguf", ggufs[0])
    project.write_ini(tier_ini(("code-fast", "fast.gguf")))
    status, output = project.run_tty("download")
    assert status == 0, output
    assert re.search(r"code-fast: fast\.gguf: 100%.*806k/806k", output), output  # huggingface_hub's bar
    assert "sha256 verified" in output
    assert "[OK] 1 downloaded, 0 already present, 0 failed" in output
    cached = project.storage / "snapshots" / COMMIT / "fast.gguf"
    assert cached.read_bytes() == ggufs[0]
    assert cached.resolve().name == hashlib.sha256(ggufs[0]).hexdigest()


def test_a_second_run_finds_the_file_present_and_fetches_no_body(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "fast.gguf", ggufs[0])
    project.write_ini(tier_ini(("code-fast", "fast.gguf")))
    assert project.run("download").returncode == 0
    again = project.run("download-models", "code-fast")
    assert again.returncode == 0, again.stderr
    assert "[=] code-fast (current): fast.gguf already present" in again.stderr
    assert "[OK] 0 downloaded, 1 already present, 0 failed" in again.stderr
    assert len(hub.gets("fast.gguf")) == 1


def test_an_interrupted_download_resumes_with_a_range_request(
        project: Project, hub: FakeHub, big_gguf: bytes) -> None:
    hub.add(REPO, "big.gguf", big_gguf, cut_once=True)
    project.write_ini(tier_ini(("code-smart", "big.gguf")))
    done = project.run("download")
    assert done.returncode == 0, done.stderr
    first, second = hub.gets("big.gguf")
    assert "range" not in first.headers
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", second.headers["range"])[1])  # type: ignore[index]
    assert 0 < resumed_at <= len(big_gguf) // 2  # continues from what the cut body delivered
    assert (project.storage / "snapshots" / COMMIT / "big.gguf").read_bytes() == big_gguf
    assert "1 downloaded" in done.stderr


def _no_file_left(project: Project) -> None:
    """Nothing in the cache but the ref and empty folders: no blob, no link, no .incomplete."""
    assert [p.relative_to(project.storage) for p in project.cache_files()
            if p.name != "CACHEDIR.TAG"] == [Path("refs/main")]


def test_a_wrong_size_fails_cleanly_and_leaves_no_file(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "fast.gguf", ggufs[0], announced_size=len(ggufs[0]) + 100)
    project.write_ini(tier_ini(("code-fast", "fast.gguf")))
    done = project.run("download")
    assert done.returncode == 1
    assert "[!] code-fast (current): fast.gguf FAILED" in done.stderr
    assert "should be of size" in done.stderr and "Traceback" not in done.stderr
    assert "[!] 0 downloaded, 0 already present, 1 failed (retry: llmstack download code-fast)" in done.stderr
    _no_file_left(project)


def test_a_wrong_sha256_fails_cleanly_and_leaves_no_file(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "fast.gguf", ggufs[0], announced_sha256=hashlib.sha256(b"other").hexdigest())
    project.write_ini(tier_ini(("code-fast", "fast.gguf")))
    done = project.run("download")
    assert done.returncode == 1
    assert "sha256 mismatch" in done.stderr and "removed" in done.stderr
    assert "Traceback" not in done.stderr
    _no_file_left(project)
    check = project.run("check")
    assert check.returncode == 1 and "missing" in check.stdout


def test_no_more_than_two_files_are_in_flight(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.hold_gets = 1.5  # each GET waits up to 1.5 s for a third one: a limit above 2 shows
    names = [f"m{i}.gguf" for i in range(4)]
    for name, data in zip(names, ggufs, strict=True):
        hub.add(REPO, name, data)
    project.write_ini(tier_ini(*[(f"t{i}", name) for i, name in enumerate(names)]))
    done = project.run("download")
    assert done.returncode == 0, done.stderr
    assert hub.max_in_flight == 2  # two at once, never three
    assert "[OK] 4 downloaded, 0 already present, 0 failed" in done.stderr


def test_hf_token_is_sent_as_authorization_but_never_printed(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    token = "hf_secretTOKENvalue123"
    hub.token = token
    hub.add(REPO, "fast.gguf", ggufs[0])
    hub.add(REPO, "bad.gguf", ggufs[1], announced_sha256="0" * 64)
    project.write_ini(tier_ini(("code-fast", "fast.gguf"), ("broken", "bad.gguf"),
                               ("absent", "absent.gguf")))
    denied = project.run("download", "code-fast")
    assert denied.returncode == 1
    assert not any("authorization" in r.headers for r in hub.requests)
    before = len(hub.requests)
    assert "gated repository" in denied.stderr and "export HF_TOKEN" in denied.stderr
    done = project.run("download", HF_TOKEN=token)
    assert done.returncode == 1
    assert "[!] 1 downloaded, 0 already present, 2 failed" in done.stderr
    sent = {r.headers.get("authorization") for r in hub.requests[before:] if "/resolve/" in r.path}
    assert sent == {f"Bearer {token}"}
    assert token not in done.stderr + done.stdout + denied.stderr + denied.stdout


def test_summary_counts_downloaded_present_and_failed(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "a.gguf", ggufs[0])
    hub.add(REPO, "b.gguf", ggufs[1])
    project.write_ini(tier_ini(("a", "a.gguf"), ("b", "b.gguf"), ("c", "missing.gguf"),
                               ("b-too", "b.gguf"), extra="[hosted]\nmodel = anthropic/claude-x\n"))
    assert project.run("download", "a").returncode == 0
    done = project.run("download")
    assert done.returncode == 1
    assert "[=] hosted, nothing to download: hosted" in done.stderr
    assert "[!] c (current): missing.gguf FAILED (file not found in the repository" in done.stderr
    assert "[!] 1 downloaded, 1 already present, 1 failed (retry: llmstack download c)" in done.stderr
    assert len(hub.gets("b.gguf")) == 1, done.stderr  # shared: fetched once, named for both
    assert "[OK] b, b-too (current): b.gguf downloaded" in done.stderr, done.stderr


def test_next_channel_downloads_the_queued_file(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "now.gguf", ggufs[0])
    hub.add(REPO, "later.gguf", ggufs[1])
    project.write_ini(tier_ini(("code-fast", "now.gguf")).replace(
        "hf_file = now.gguf", "hf_file = now.gguf\nhf_file_next = later.gguf"))
    done = project.run("download", "--channel", "next")
    assert done.returncode == 0, done.stderr
    assert "code-fast (next): later.gguf downloaded" in done.stderr
    assert not hub.gets("now.gguf")


def test_bad_arguments_are_one_line_errors(project: Project) -> None:
    missing = project.run("download")
    assert missing.returncode == 2
    assert missing.stderr.startswith("[!] models.ini not found: ") and "llmstack init" in missing.stderr
    assert project.run("check").stderr == missing.stderr and len(missing.stderr.splitlines()) == 1
    project.write_ini(tier_ini(("code-fast", "fast.gguf")))
    unknown = project.run("download", "nope")
    assert (unknown.returncode, unknown.stderr) == (
        2, "[!] unknown tier: nope (tiers: code-fast)\n")
    channel = project.run("download", "--channel", "beta")
    assert channel.returncode == 2 and "invalid choice: 'beta'" in channel.stderr
    closed = f"http://127.0.0.1:{free_port()}"
    down = project.run("download", HF_ENDPOINT=closed)
    assert down.returncode == 1 and f"FAILED (cannot reach {closed}: " in down.stderr
    assert "Traceback" not in down.stderr


def test_offline_download_reports_cached_files_and_fails_on_the_rest(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "a.gguf", ggufs[0])
    project.write_ini(tier_ini(("a", "a.gguf"), ("b", "b.gguf")))
    assert project.run("download", "a").returncode == 0
    before = len(hub.requests)
    offline = project.run("download", HF_HUB_OFFLINE="1")
    assert offline.returncode == 1
    assert "[=] a (current): a.gguf already present" in offline.stderr
    assert "b.gguf FAILED (not in the cache, and HF_HUB_OFFLINE is set)" in offline.stderr
    assert len(hub.requests) == before


def test_ctrl_c_stops_at_once_and_leaves_no_partial_file(
        project: Project, hub: FakeHub, big_gguf: bytes) -> None:
    hub.hold_gets = 60.0  # the body never comes while the test runs
    hub.add(REPO, "big.gguf", big_gguf)
    project.write_ini(tier_ini(("code-smart", "big.gguf")))
    proc = subprocess.Popen([str(CLI), "download"], cwd=project.root, env=project.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: hub.max_in_flight == 1, 30, "the download's GET")
        assert list(project.storage.glob("blobs/*.incomplete"))  # the transfer has begun
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "[!] interrupted" in err and "Traceback" not in err
    assert not list(project.storage.glob("blobs/*"))
