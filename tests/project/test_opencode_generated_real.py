"""The real opencode accepts the opencode.json a project generated (the full run through a
detached stack is tests/real/test_opencode_project_real.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from llmstack.project.paths import Project
from tests.project.conftest import Cli
from tests.real.test_opencode_real import opencode_bin, opencode_env  # noqa: F401  (the cached npm install)


def test_opencode_accepts_the_template_config(cli: Cli, project: Project, tmp_path: Path,
                                              opencode_bin: Path) -> None:
    """opencode's own config loader resolves what `llmstack install` wrote for the template."""
    assert cli("install").returncode == 0
    env = opencode_env(tmp_path / "home", project.opencode_json)
    result = subprocess.run([str(opencode_bin), "debug", "config"], cwd=project.root, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    resolved = json.loads(result.stdout)
    ours = json.loads(project.opencode_json.read_text())
    options = resolved["provider"]["llmstack"]["options"]
    assert options["headerTimeout"] == options["chunkTimeout"] == 590_000
    assert resolved["model"] == "llmstack/auto" and resolved["small_model"] == "llmstack/code-fast"
    for agent in ("plan", "plan-nofilter"):
        assert resolved["agent"][agent]["permission"] == ours["agent"][agent]["permission"]
    assert set(resolved["command"]) == {"review", "nofilter"}
    assert resolved["instructions"] == [str(project.agents_md)]
