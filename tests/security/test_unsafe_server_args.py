"""A shared models.ini cannot make llama-server write files, serve the disk or run tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmstack.config.ini import ModelsIniError, parse_stack

TIER = "[e]\nhf_repo = org/repo\nhf_file = m.gguf\n"


@pytest.mark.parametrize("value, what", [
    ("--tools all", "run tools"),
    ("--tools=exec_shell_command", "run tools"),
    ("--mcp-servers-json '{}'", "run tools"),
    ("--log-file /tmp/x.log", "write files"),
    ("--slot-save-path /", "write files"),
    ("--path /", "serve or read files"),
    ("--media-path /", "serve or read files"),
    ("--ssl-key-file /etc/shadow", "serve or read files"),
    ("--api-prefix /x", "move the routes"),
])
def test_flags_that_reach_outside_the_model_are_a_file_line_error(value: str, what: str) -> None:
    with pytest.raises(ModelsIniError) as info:
        parse_stack(TIER + f"llama_server_args = --pooling mean {value}\n", "m.ini")
    assert str(info.value).startswith("m.ini:4: [e] llama_server_args: ")
    assert "is refused: it would let llama-server " + what in str(info.value)


def test_serve_refuses_such_a_models_ini_before_starting_anything(tmp_path: Path) -> None:
    ini = tmp_path / "models.ini"
    ini.write_text(TIER + "llama_server_args = --tools all\n")
    done = subprocess.run([sys.executable, "-m", "llmstack", "serve", "--models-ini", str(ini)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{ini}:4: [e] llama_server_args: --tools is refused" in done.stderr
    assert "Traceback" not in done.stderr
