"""Channel markers, precedence (flag > environment > pinned > current) and the next channel."""

from __future__ import annotations

import pytest

from llmstack.config.demo import demo_stack
from llmstack.config.ini import bundled_template_text, parse_stack
from llmstack.errors import UserError
from llmstack.project.channels import (
    CURRENT,
    Channel,
    next_stack,
    read_marker,
    require_local,
    resolve_install,
    resolve_serve,
    write_marker,
)
from llmstack.project.paths import Project
from llmstack.settings import Settings

REMOTE = "http://10.0.0.5:10101"


def pin(project: Project, channel: Channel) -> None:
    project.state.mkdir(exist_ok=True)
    write_marker(project.default_channel, channel)


def test_marker_is_one_readable_line(project: Project) -> None:
    pin(project, Channel("external", REMOTE))
    assert project.default_channel.read_text() == f"external {REMOTE}\n"
    assert read_marker(project.default_channel) == Channel("external", REMOTE)
    assert read_marker(project.active_channel) is None
    project.default_channel.write_text("sideways\n")
    with pytest.raises(UserError, match=r"default-channel:1: expected"):
        read_marker(project.default_channel)


def test_install_flag_beats_env_and_says_so(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    # the original's trap: inside an external shell `install --current` quietly stayed external
    monkeypatch.setenv("LLMSTACK_REMOTE_URL", REMOTE)
    resolved = resolve_install(project, CURRENT, Settings.read())
    assert resolved.channel == CURRENT and resolved.source == "flag"
    assert resolved.notes and "ignoring $LLMSTACK_REMOTE_URL" in resolved.notes[0]
    other = resolve_install(project, Channel("external", "http://127.0.0.1:1"), Settings.read())
    assert other.channel.url == "http://127.0.0.1:1" and other.notes


def test_install_env_beats_pin_with_a_note(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    pin(project, Channel("next"))
    assert resolve_install(project, None, Settings.read()).channel == Channel("next")
    monkeypatch.setenv("LLMSTACK_REMOTE_URL", REMOTE + "/")
    resolved = resolve_install(project, None, Settings.read())
    assert resolved.channel == Channel("external", REMOTE) and resolved.source == "environment"
    assert "instead of the pinned 'next'" in resolved.notes[0]


def test_install_default_and_external_url_fallbacks(project: Project,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_install(project, None, Settings.read()) == resolve_install(project, None, Settings.read())
    assert resolve_install(project, None, Settings.read()).channel == CURRENT
    bare = Channel("external")
    assert resolve_install(project, bare, Settings.read()).channel.url == "http://127.0.0.1:10101"
    pin(project, Channel("external", REMOTE))
    assert resolve_install(project, bare, Settings.read()).channel.url == REMOTE
    monkeypatch.setenv("LLMSTACK_REMOTE_URL", "http://127.0.0.1:2")
    resolved = resolve_install(project, bare, Settings.read())
    assert resolved.channel.url == "http://127.0.0.1:2" and not resolved.notes


def test_serve_precedence(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_serve(project, None, Settings.read()).channel == CURRENT
    pin(project, Channel("next"))
    assert resolve_serve(project, None, Settings.read()).channel == Channel("next")
    assert resolve_serve(None, None, Settings.read()).channel == CURRENT  # an explicitly named models.ini
    monkeypatch.setenv("LLMSTACK_USE_NEXT", "0")
    assert resolve_serve(project, None, Settings.read()).channel == CURRENT  # env beats the pin
    monkeypatch.setenv("LLMSTACK_USE_NEXT", "1")
    flagged = resolve_serve(project, "current", Settings.read())
    assert flagged.channel == CURRENT and "ignoring $LLMSTACK_USE_NEXT=1" in flagged.notes[0]
    assert not resolve_serve(project, "next", Settings.read()).notes
    monkeypatch.setenv("LLMSTACK_USE_NEXT", "perhaps")
    with pytest.raises(UserError, match="LLMSTACK_USE_NEXT"):
        resolve_serve(project, None, Settings.read())


def test_local_only_verbs_refuse_in_external_mode(project: Project,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSTACK_REMOTE_URL", REMOTE)
    require_local(project, "download")  # a stray variable does not make a project a client
    pin(project, Channel("external", REMOTE))
    with pytest.raises(UserError, match=rf"`llmstack download` .* client of {REMOTE}"):
        require_local(project, "download")
    with pytest.raises(UserError, match="client of"):
        resolve_serve(project, None, Settings.read())
    assert resolve_serve(project, "current", Settings.read()).channel == CURRENT


def test_next_channel_swaps_queued_files_and_models() -> None:
    stack = parse_stack(bundled_template_text())
    nxt = {t.name: t for t in next_stack(stack).tiers}
    assert nxt["code-smart"].hf_file == "Qwen3-Coder-Next-UD-Q4_K_XL.gguf"
    assert nxt["code-smart"].size_gb == 50 and nxt["code-smart"].quant == "UD-Q4_K_XL"
    assert nxt["code-fast"] == stack.tiers[0]  # nothing queued for code-fast
    hosted = parse_stack("[h]\nrole = fast\nmodel = openai/a\nmodel_next = openai/b\nctx_size = 9000\n")
    assert next_stack(hosted).tiers[0].model == "openai/b"
    with pytest.raises(UserError, match="no tier queues an upgrade"):
        next_stack(demo_stack())
