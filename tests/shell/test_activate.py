"""``eval "$(llmstack activate <shell>)"`` run by the real bash, zsh and fish."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llmstack.cli.shell import env_code, hook
from llmstack.project.paths import Project
from tests.shell.conftest import ORIGINAL, Shell

VARS = ("OPENCODE_CONFIG", "LLMSTACK_WORK_DIR", "LLMSTACK_ACTIVE", "LLMSTACK_CHANNEL",
        "LLMSTACK_MODELS_INI", "LLMSTACK_BASE_URL", "LLMSTACK_REMOTE_URL")
ME = f"'{sys.executable}' -m llmstack"


def _sq(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


def _posix_script(shell: str, layout: dict[str, Path]) -> str:
    root = layout["root"]
    fields = "".join(f"|{v}=${{{v}-<unset>}}" for v in VARS)
    return f"""eval "$({ME} activate {shell})"
show() {{ printf '%s\\n' "$1{fields}|PS1=$PS1"; }}
show before
cd {_sq(root / "src" / "deep")}
show inside
echo next > {_sq(root / ".llmstack" / "default-channel")}
show next
cd {_sq(layout["outside"])}
show after
"""


def _fish_script(layout: dict[str, Path]) -> str:
    root = layout["root"]
    fields = "".join(f'"|{v}="(set -q {v}; and echo ${v}; or echo "<unset>")' for v in VARS)
    return f"""{ME} activate fish | source
function show
    echo $argv[1]{fields}"|PS1="(fish_prompt | string collect)
end
show before
cd {_sq(root / "src" / "deep")}
show inside
echo next > {_sq(root / ".llmstack" / "default-channel")}
emit fish_prompt
show next
cd {_sq(layout["outside"])}
show after
"""


def _parse(stdout: str) -> dict[str, dict[str, str]]:
    rows = {}
    for line in stdout.splitlines():
        head, _, rest = line.partition("|")
        if head in ("before", "inside", "next", "after"):
            rows[head] = dict(field.split("=", 1) for field in rest.split("|"))
    assert set(rows) == {"before", "inside", "next", "after"}, stdout
    return rows


def _check(rows: dict[str, dict[str, str]], layout: dict[str, Path], colour: str) -> None:
    """``colour``: how the shell's prompt spells 256-colour N, with N as ``{}``."""
    root = layout["root"]
    for moment in ("before", "after"):
        row = rows[moment]
        assert row["OPENCODE_CONFIG"] == ORIGINAL["OPENCODE_CONFIG"]
        assert row["LLMSTACK_MODELS_INI"] == ORIGINAL["LLMSTACK_MODELS_INI"]
        for name in ("LLMSTACK_WORK_DIR", "LLMSTACK_ACTIVE", "LLMSTACK_CHANNEL",
                     "LLMSTACK_BASE_URL", "LLMSTACK_REMOTE_URL"):
            assert row[name] == "<unset>", (moment, name, row[name])
        assert "llmstack" not in row["PS1"]
    inside = rows["inside"]
    assert inside["OPENCODE_CONFIG"] == str(root / ".llmstack" / "opencode.json")
    assert inside["LLMSTACK_MODELS_INI"] == str(root / ".llmstack" / "models.ini")
    assert inside["LLMSTACK_WORK_DIR"] == str(root)
    assert inside["LLMSTACK_ACTIVE"] == "1" and inside["LLMSTACK_CHANNEL"] == "current"
    assert inside["LLMSTACK_BASE_URL"] == "http://127.0.0.1:12345/v1"  # models.ini's port
    assert inside["LLMSTACK_REMOTE_URL"] == "<unset>"
    assert colour.format(38) in inside["PS1"] and "[llmstack:my proj]" in inside["PS1"]
    assert rows["next"]["LLMSTACK_CHANNEL"] == "next"  # a marker change is picked up in place
    assert colour.format(208) in rows["next"]["PS1"]
    assert rows["next"]["PS1"].count("[llmstack:") == 1
    assert rows["after"]["PS1"] == rows["before"]["PS1"]


@pytest.mark.parametrize("name", ["bash", "zsh"])
def test_posix_shell_hook_sets_and_restores(name: str, shell: Shell,
                                            layout: dict[str, Path]) -> None:
    colour = "%F{{{}}}" if name == "zsh" else "\\[\\e[38;5;{}m\\]"
    _check(_parse(shell(name, _posix_script(name, layout))), layout, colour)


def test_fish_hook_sets_and_restores(shell: Shell, layout: dict[str, Path]) -> None:
    _check(_parse(shell("fish", _fish_script(layout))), layout, "\x1b[38;5;{}m")


def test_reload_reactivates_without_doubling_the_prompt(shell: Shell,
                                                        layout: dict[str, Path]) -> None:
    root = layout["root"]
    script = f"""cd {_sq(root)}
eval "$({ME} reload --shell bash)"
echo "one|$OPENCODE_CONFIG|$PS1"
eval "$({ME} reload --shell bash)"
echo "two|$OPENCODE_CONFIG|$PS1"
cd {_sq(layout["outside"])}
echo "out|$OPENCODE_CONFIG|$PS1"
"""
    rows = {line.split("|")[0]: line.split("|")[1:] for line in shell("bash", script).splitlines()
            if line.startswith(("one|", "two|", "out|"))}
    assert rows["one"][0] == str(root / ".llmstack" / "opencode.json")  # reload exports it
    assert rows["two"] == rows["one"] and rows["two"][1].count("[llmstack:") == 1
    assert rows["out"] == [ORIGINAL["OPENCODE_CONFIG"], "P> "]


def test_powershell_hook_text(layout: dict[str, Path]) -> None:
    text = hook("powershell")
    assert text == hook("pwsh")
    assert "function global:prompt" in text and "$global:__LlmstackOrigPrompt" in text
    assert "Test-Path -LiteralPath (Join-Path $d '.llmstack')" in text
    assert f"& '{sys.executable}' '-m' 'llmstack' activate powershell --env $Root" in text
    assert "Remove-Item \"Env:$v\"" in text and "$global:__LlmstackSaved[$v]" in text
    for name in VARS:
        assert f"'{name}'" in text
    code = env_code("powershell", Project(layout["root"]))
    assert f"$env:OPENCODE_CONFIG = '{layout['root'] / '.llmstack' / 'opencode.json'}'" in code
    assert "Remove-Item Env:LLMSTACK_REMOTE_URL -ErrorAction SilentlyContinue" in code
    assert "$global:__LlmstackLabel = '[llmstack:my proj]'" in code


def test_env_values_are_quoted_for_each_shell(tmp_path: Path) -> None:
    root = tmp_path / "it's $(here)"
    (root / ".llmstack").mkdir(parents=True)
    assert f"export LLMSTACK_WORK_DIR='{tmp_path}/it'\\''s $(here)'" in env_code("bash", Project(root))
    assert f"set -gx LLMSTACK_WORK_DIR '{tmp_path}/it\\'s $(here)'" in env_code("fish", Project(root))
    assert f"$env:LLMSTACK_WORK_DIR = '{tmp_path}/it''s $(here)'" in env_code("powershell", Project(root))
    assert "[llmstack:it_s __here_]" in env_code("zsh", Project(root))  # nothing a prompt expands


def test_the_hook_never_climbs_into_home(shell: Shell, layout: dict[str, Path]) -> None:
    home = layout["home"]
    (home / ".llmstack").mkdir()
    (home / "code").mkdir()
    script = f"""eval "$({ME} activate bash)"
cd {_sq(home / "code")}
echo "below|${{LLMSTACK_WORK_DIR-<unset>}}"
cd {_sq(home)}
echo "home|${{LLMSTACK_WORK_DIR-<unset>}}"
"""
    out = shell("bash", script)
    assert "below|<unset>" in out  # a dir under home does not belong to a ~/.llmstack
    assert f"home|{home}" in out  # home itself, as the CLI's find_project
