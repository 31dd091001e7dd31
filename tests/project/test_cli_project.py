"""init / configure / install / setup through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from llmstack.cli import install
from llmstack.config.ini import bundled_template_text
from llmstack.project.paths import Project
from llmstack.settings import Settings
from tests.conftest import toml_loads
from tests.project.conftest import Cli, tree

VERBS = ("serve", "install-server", "template", "init", "configure", "install", "setup")


def one_line_error(result) -> str:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()  # progress lines ([*] ...) may come first
    errors = [line for line in lines if not line.startswith("[*] ")]
    assert len(errors) == 1 and errors[0].startswith("[!] ") and errors[0] == lines[-1], result.stderr
    return errors[0]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(cli: Cli, verb: str) -> None:
    result = cli(verb, "--help")
    assert result.returncode == 0 and "usage: llmstack " + verb in result.stdout


def test_every_verb_says_what_it_does() -> None:
    from llmstack.cli.registry import VERBS

    assert all(verb.command().description for verb in VERBS), \
        [verb.name for verb in VERBS if not verb.command().description]


def test_stop_help_states_the_grace_periods_in_force() -> None:
    from llmstack.cli.lifecycle import COMMANDS
    from llmstack.project.daemon import STOP_GRACE
    from swapper.config import SHUTDOWN_GRACE

    text = COMMANDS["stop"].description or ""
    assert f"{SHUTDOWN_GRACE:.0f} s and" in text and f"{STOP_GRACE:.0f} s later" in text


def test_the_state_directory_keeps_all_but_models_ini_out_of_git(cli: Cli, project: Project) -> None:
    subprocess.run(["git", "init", "-q"], cwd=project.root, check=True)
    assert cli("init").returncode == 0 and cli("configure").returncode == 0
    assert cli("stop").returncode == 0  # takes the start/stop lock
    logs = project.state / "logs"  # and what a running stack leaves
    logs.mkdir()
    for name in ("logs/llmstack.log", "logs/fast.log", "logs/serve.stderr", "daemon.json",
                 "active-channel", "default-channel", "opencode.json.20250101-000000.bak",
                 "litellm_config.yaml"):
        (project.state / name).write_text("current\n")
    shown = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                           cwd=project.root, capture_output=True, text=True, check=True).stdout
    assert sorted(shown.splitlines()) == ["?? .llmstack/.gitignore", "?? .llmstack/models.ini"]
    (project.state / ".gitignore").write_text("# mine\n")
    assert cli("configure").returncode == 0
    assert (project.state / ".gitignore").read_text() == "# mine\n"  # never rewritten


def test_init_seeds_the_template_and_never_overwrites(cli: Cli, project: Project) -> None:
    first = cli("init")
    assert first.returncode == 0 and "[OK]" in first.stderr
    assert project.models_ini.read_text() == bundled_template_text()
    project.models_ini.write_text("; mine\n")
    second = cli("init")
    assert second.returncode == 0 and "already exists" in second.stderr
    assert project.models_ini.read_text() == "; mine\n"


def test_print_writes_nothing(cli: Cli, project: Project) -> None:
    fresh = cli("install", "--print")  # the original seeded models.ini here
    assert fresh.returncode == 0 and not project.state.exists()
    assert json.loads(fresh.stdout)["model"] == "llmstack/auto"
    cli("init")
    before = tree(project.root)
    for args in (("configure", "--print"), ("install", "--next", "--print"),
                 ("configure", "--print", "--demo")):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        json.loads(result.stdout)
        assert tree(project.root) == before


def test_configure_prints_what_points_claude_code_and_codex_at_the_stack(
        cli: Cli, project: Project) -> None:
    """``--print claude`` / ``codex`` / ``codex-models``: shell lines, a config.toml and the
    model catalog it names, for the same stack as opencode.json; nothing is written."""
    import shlex

    cli("init")
    project.models_ini.write_text(project.models_ini.read_text().replace(
        "router_port      = 10101", "router_port      = 10123"))
    before = tree(project.root)
    claude = cli("configure", "--print", "claude")
    assert claude.returncode == 0, claude.stderr
    exports = dict(shlex.split(line, comments=True)[1].split("=", 1)
                   for line in claude.stdout.splitlines() if line.startswith("export "))
    assert exports["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:10123"
    assert exports["ANTHROPIC_MODEL"] == "auto"
    assert exports["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "code-fast"
    assert exports["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert "CLAUDE_CODE_MAX_OUTPUT_TOKENS" not in exports  # the stack caps each answer
    codex = toml_loads(cli("configure", "--print", "codex").stdout)
    assert (codex["model"], codex["model_provider"]) == ("auto", "llmstack")
    assert codex["model_providers"]["llmstack"] == {
        "name": "llmstack", "base_url": "http://127.0.0.1:10123/v1", "wire_api": "responses"}
    assert codex["model_catalog_json"] == str(project.state.resolve() / "codex-models.json")
    catalog = json.loads(cli("configure", "--print", "codex-models").stdout)["models"]
    windows = {m["slug"]: m["context_window"] for m in catalog}
    assert windows["auto"] == int(exports["CLAUDE_CODE_MAX_CONTEXT_TOKENS"]) >= 131072
    assert windows["code-fast"] == 131072 and "embed" not in windows
    assert json.loads(cli("configure", "--print").stdout)["model"] == "llmstack/auto"
    assert cli("configure", "--print", "vim").returncode == 2
    assert tree(project.root) == before


def test_configure_writes_what_print_shows(cli: Cli, project: Project) -> None:
    cli("init")
    shown = cli("configure", "--print").stdout
    result = cli("configure")
    assert result.returncode == 0
    assert project.opencode_json.read_text() == shown
    config = json.loads(shown)
    assert config["instructions"] == [str(project.agents_md)]
    assert "plan" in project.agents_md.read_text() and ".llmstack/" in project.agents_md.read_text()
    assert "(unchanged)" in cli("configure").stderr


def test_a_user_edit_is_kept_as_a_backup_and_reported(cli: Cli, project: Project) -> None:
    cli("init")
    cli("configure")
    edited = project.opencode_json.read_text().replace('"notify"', '"disabled"')
    project.opencode_json.write_text(edited)
    result = cli("configure")
    assert result.returncode == 0 and "had been edited" in result.stderr
    backups = list(project.state.glob("opencode.json.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == edited
    assert backups[0].name in result.stderr
    assert '"notify"' in project.opencode_json.read_text()


def test_install_pins_the_channel_and_renders_for_it(cli: Cli, project: Project) -> None:
    result = cli("install", "--next")
    assert result.returncode == 0, result.stderr
    assert project.default_channel.read_text() == "next\n"
    options = json.loads(project.opencode_json.read_text())["provider"]["llmstack"]["options"]
    assert options["headerTimeout"] == 640_000  # sized by the next files
    cli("install", "--current")
    assert project.default_channel.read_text() == "current\n"


def test_env_var_never_silently_overrides_an_explicit_flag(cli: Cli, project: Project) -> None:
    result = cli("install", "--current", env={"LLMSTACK_REMOTE_URL": "http://127.0.0.1:9"})
    assert result.returncode == 0, result.stderr
    assert "ignoring $LLMSTACK_REMOTE_URL" in result.stderr
    assert project.default_channel.read_text() == "current\n"
    config = json.loads(project.opencode_json.read_text())
    assert config["provider"]["llmstack"]["options"]["baseURL"] == "http://127.0.0.1:10101/v1"


def test_errors_are_one_line(cli: Cli, project: Project) -> None:
    assert "llmstack init" in one_line_error(cli("configure"))  # no models.ini yet
    assert "not allowed with" in one_line_error(cli("install", "--external", "x", "--next"))
    assert "must start with http" in one_line_error(cli("install", "--external", "ftp://x"))
    assert "cannot reach" in one_line_error(cli("install", "--external", "http://127.0.0.1:9"))
    assert "invalid choice" in one_line_error(cli("nonsense"))
    assert "unrecognized arguments" in one_line_error(cli("init", "--bogus"))
    project.state.mkdir()
    project.default_channel.write_text("sideways\n")
    assert "default-channel:1:" in one_line_error(cli("configure"))
    assert not project.models_ini.exists()


def test_a_reader_that_leaves_is_not_an_error_message(project: Project) -> None:
    read, write = os.pipe()
    os.close(read)  # like `llmstack template | head -0`: nobody reads
    result = subprocess.run([sys.executable, "-m", "llmstack", "template"], cwd=project.root,
                            stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    os.close(write)
    assert result.returncode == 141 and result.stderr == ""


def test_models_ini_errors_are_located(cli: Cli, project: Project) -> None:
    project.state.mkdir()
    project.models_ini.write_text("[fast]\nrole = fast\nhf_repo = a/b\nhf_file = c.gguf\nctx_size = 8k\n")
    result = cli("configure")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "models.ini:5: [fast] ctx_size:" in result.stderr


def _fake_download(monkeypatch: pytest.MonkeyPatch, code: int = 0,
                   calls: list[tuple] | None = None) -> None:
    """A stand-in for llmstack.models.download: every file pending, download_tiers recorded."""
    def download_tiers(stack: object, names: list[str], channel: str, settings: object) -> int:
        if calls is not None:
            calls.append(("download", names, (Path.cwd() / ".llmstack" / "opencode.json").exists()))
        return code

    download = types.ModuleType("llmstack.models.download")
    download.download_tiers = download_tiers  # type: ignore[attr-defined]
    download.pending = lambda stack, settings: [("code-fast", 2.5)]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llmstack.models.download", download)


def test_setup_runs_init_configure_download_start_in_order(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []

    def start_detached(started: Project, settings: object, demo: bool = False,
                       port: int | None = None) -> int:
        root = started.root
        calls.append(("start", root, demo, port, (root / ".llmstack" / "opencode.json").exists()))
        return 0

    _fake_download(monkeypatch, calls=calls)
    daemon = types.ModuleType("llmstack.project.daemon")
    daemon.start_detached = start_detached  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llmstack.project.daemon", daemon)
    assert install.setup(project, Settings(), yes=True) == 0
    assert calls == [("download", ["code-fast", "code-smart", "plan", "plan-uncensored",
                                  "embed"], True),
                     ("start", project.root, False, None, True)]
    calls.clear()
    demo = Project(project.root / "demo")
    demo.root.mkdir()
    assert install.setup(demo, Settings(), demo=True, port=10555) == 0
    assert calls == [("start", demo.root, True, 10555, True)] and not demo.models_ini.exists()
    config = json.loads(demo.opencode_json.read_text())
    assert config["small_model"] == "llmstack/fast"
    assert config["provider"]["llmstack"]["options"]["baseURL"] == "http://127.0.0.1:10555/v1"


def test_setup_stops_at_a_failed_download(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_download(monkeypatch, code=3)
    assert install.setup(project, Settings(), yes=True) == 3
    assert project.opencode_json.exists() and project.models_ini.exists()


def test_walks_up_to_the_project_from_a_subdirectory(cli: Cli, project: Project) -> None:
    cli("init")
    sub = project.root / "src" / "deep"
    sub.mkdir(parents=True)
    result = cli("configure", cwd=sub)
    assert result.returncode == 0, result.stderr
    assert project.opencode_json.exists() and not (sub / ".llmstack").exists()


def test_local_verbs_refuse_in_external_mode(cli: Cli, project: Project) -> None:
    project.state.mkdir()
    project.default_channel.write_text("external http://127.0.0.1:9\n")
    for verb in ("init", "setup"):
        line = one_line_error(cli(verb))
        assert f"`llmstack {verb}`" in line and "install --current" in line
    assert not project.models_ini.exists()
    demo = cli("configure", "--demo", "--print")  # an explicit --demo needs no remote
    assert demo.returncode == 0 and "fetching" not in demo.stderr
    assert json.loads(demo.stdout)["small_model"] == "llmstack/fast"


def test_agents_md_is_packaged() -> None:
    assert install.agents_md_text().startswith("# ")
    assert Path(install.__file__).parent.with_name("data").joinpath("AGENTS.md").exists()
