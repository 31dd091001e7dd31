"""``llmstack add <tier> <repo>[:<quant>]`` through the real CLI, against the loopback fake hub's
file listing (the hub's tree API), hostile listings included."""

from __future__ import annotations

import pytest

from llmstack.config.ini import parse_stack

from .conftest import REPO, Project
from .fake_hub import COMMIT, FakeHub

MAX_ENTRIES, MAX_PAGES = 10_000, 20  # llmstack.models.hub_listing's bounds
HEAD = "; my stack\n[DEFAULT]\nthreads = 1   ; keep this comment\n"


def _listing(*entries: tuple[str, int]) -> list[dict[str, object]]:
    return [{"type": "file", "oid": "0" * 40, "size": size, "path": path} for path, size in entries]


def test_add_picks_the_quant_downloads_it_and_writes_size_and_window(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    for name, data in (("tiny-Q4_K_M.gguf", ggufs[0]), ("tiny-Q8_0.gguf", ggufs[1]),
                       ("mmproj-tiny-Q8_0.gguf", ggufs[2]),
                       ("Q8_0/tiny-Q8_0-00001-of-00002.gguf", ggufs[3])):
        hub.add(REPO, name, data)
    project.write_ini(HEAD)
    done = project.run("add", "fast", f"{REPO}:q8_0")
    assert done.returncode == 0, done.stderr
    text = project.ini.read_text()
    assert text.startswith(HEAD)  # every comment and key kept
    tier = parse_stack(text).tier("fast")
    assert tier is not None and tier.role == "fast"
    assert (tier.hf_repo, tier.hf_file, tier.quant) == (REPO, "tiny-Q8_0.gguf", "q8_0")
    assert tier.size_gb == 0.01 and tier.ctx_size == 4096  # the tiny model's trained window
    assert "window 4096 from its GGUF header" in done.stderr
    assert (project.storage / "snapshots" / COMMIT / "tiny-Q8_0.gguf").read_bytes() == ggufs[1]
    assert [r.path for r in hub.requests if r.method == "GET" and "/resolve/" in r.path] == [
        f"/{REPO}/resolve/main/tiny-Q8_0.gguf"]
    check = project.run("check", HF_HUB_OFFLINE="1")
    assert check.returncode == 0 and " present " in check.stdout, check.stdout


def test_add_without_a_quant_takes_q4_k_m_and_no_download_writes_only_the_tier(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "tiny-Q4_K_M.gguf", ggufs[0])
    hub.add(REPO, "tiny-UD-Q4_K_XL.gguf", ggufs[1])
    done = project.run("add", "helper", REPO, "--no-download")
    assert done.returncode == 0, done.stderr
    assert "fetch it: llmstack download helper" in done.stderr
    tier = parse_stack(project.ini.read_text()).tier("helper")
    assert tier is not None and (tier.hf_file, tier.quant, tier.role) == ("tiny-Q4_K_M.gguf", "Q4_K_M", "")
    assert tier.ctx_size == 0  # unknown until downloaded: the model's own default
    assert not [r for r in hub.requests if "/resolve/" in r.path]


def test_add_refuses_a_name_already_taken_and_asks_nothing_of_the_hub(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "tiny-Q4_K_M.gguf", ggufs[0])
    project.write_ini(f"[code-fast]\nrole = fast\nhf_repo = {REPO}\nhf_file = x.gguf\n")
    before = project.ini.read_text()
    done = project.run("add", "fast", REPO)  # role fast's default alias of [code-fast]
    assert done.returncode == 2 and "already has a tier or alias 'fast'" in done.stderr
    assert project.ini.read_text() == before and not hub.requests


def test_add_warns_when_the_tier_cannot_fit_beside_the_resident_set(
        project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    hub.add(REPO, "tiny-Q4_K_M.gguf", ggufs[0])
    hub.add(REPO, "big-Q4_K_M.gguf", ggufs[1])
    project.write_ini(f"[DEFAULT]\nmemory_budget_mb = 15\n\n[fast]\nhf_repo = {REPO}\n"
                      "hf_file = tiny-Q4_K_M.gguf\nrole = fast\nsize_gb = 0.01\n")
    done = project.run("add", "agent", f"{REPO}:big-Q4_K_M.gguf", "--no-download")
    assert done.returncode == 0, done.stderr
    warning = next(line for line in done.stderr.splitlines() if "warning" in line)
    assert "models.ini:2: [DEFAULT] memory_budget_mb: agent + fast need" in warning
    assert "over the budget of 15 MB" in warning and "serve refuses" in warning
    assert parse_stack(project.ini.read_text()).tier("agent") is not None
    check = project.run("check")
    assert check.returncode == 1 and "over the budget of 15 MB" in check.stdout


@pytest.mark.parametrize(("listing", "expected"), [
    (_listing(("../escape-Q4_K_M.gguf", 10)), "has a '..' part: expected a file's path"),
    (_listing(("/etc/abs-Q4_K_M.gguf", 10)), "is an absolute path"),
    (_listing(("sub\\win-Q4_K_M.gguf", 10)), "has a backslash"),
    (_listing(("x-Q4_K_M.gguf", 2**60)), "the size 1152921504606846976: refused"),
    (_listing(("x-Q4_K_M.gguf", -1)), "the size -1: refused"),
    ([{"type": "file", "path": "x-Q4_K_M.gguf", "size": "10"}], "the size '10': refused"),
    ([{"type": "symlink", "path": "x-Q4_K_M.gguf"}], "an entry that is not a file"),
    ({"files": []}, "is not a list of files"),
    (b"[" * 100_000 + b"]" * 100_000, "is not JSON"),
    (b"x" * (9 << 20), "larger than 8 MiB a page"),
])
def test_a_hostile_listing_is_refused_and_nothing_is_written(
        project: Project, hub: FakeHub, listing: object, expected: str) -> None:
    hub.listings[REPO] = [listing]
    done = project.run("add", "fast", REPO)
    assert done.returncode == 1, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not project.ini.exists() and not [r for r in hub.requests if "/resolve/" in r.path]


def test_listings_are_bounded_in_entries_pages_and_origin(project: Project, hub: FakeHub) -> None:
    page = _listing(*((f"f{i}.bin", 1) for i in range(1000)))
    hub.listings[REPO] = [page] * (MAX_ENTRIES // 1000 + 1)
    done = project.run("add", "fast", REPO)
    assert done.returncode == 1 and f"more than {MAX_ENTRIES} files" in done.stderr
    assert len([r for r in hub.requests if "/tree/" in r.path]) == MAX_ENTRIES // 1000 + 1

    hub.requests.clear()
    hub.listings[REPO] = [[]]
    hub.next_url = f"{hub.url}/api/models/{REPO}/tree/main?cursor=0"  # pages without end
    done = project.run("add", "fast", REPO)
    assert done.returncode == 1 and f"goes on past {MAX_PAGES} pages" in done.stderr
    assert len(hub.requests) == MAX_PAGES

    hub.requests.clear()
    hub.next_url = "http://127.0.0.2:9/api/elsewhere"
    done = project.run("add", "fast", REPO)
    assert done.returncode == 1 and "is not on http://127.0.0.1" in done.stderr
    assert len(hub.requests) == 1


def test_a_file_name_an_ini_line_cannot_hold_is_refused(project: Project, hub: FakeHub) -> None:
    hub.listings[REPO] = [_listing(("odd ;name-Q4_K_M.gguf", 10))]  # a hub name, but ` ;` starts a comment
    done = project.run("add", "fast", REPO, "--no-download")
    assert done.returncode == 2 and "cannot be written in models.ini as it is" in done.stderr
    assert not project.ini.exists()


def test_unknown_and_gated_repos_are_one_line(project: Project, hub: FakeHub, ggufs: list[bytes]) -> None:
    done = project.run("add", "fast", "nobody/nothing-GGUF")
    assert done.returncode == 1 and "nobody/nothing-GGUF: repository not found" in done.stderr
    hub.token = "hf_tok"
    hub.add(REPO, "tiny-Q4_K_M.gguf", ggufs[0])
    done = project.run("add", "fast", REPO)
    assert done.returncode == 1 and "the hub refuses access (401)" in done.stderr
    assert "export HF_TOKEN" in done.stderr
    done = project.run("add", "fast", REPO, "--no-download", HF_TOKEN="hf_tok")
    assert done.returncode == 0, done.stderr
    assert "hf_tok" not in done.stderr + done.stdout
