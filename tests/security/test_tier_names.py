"""A tier name is also a file name (``<log dir>/<tier>.log``): a models.ini, meant to be
committed and shared, cannot make the stack write outside the project by naming a tier
``../../x``. llmstack refuses such a name (``file:line``); the swapper, whose model ids
may hold ``/`` (``org/model``), maps any id to one safe file name."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmstack.config.ini import ModelsIniError, parse_stack
from llmstack.config.schema import TIER_NAME_MAX
from swapper.config import ModelSpec, SwapperConfig
from swapper.logring import MAX_NAME_CHARS, file_name, log_file
from swapper.manager import Manager
from tests.conftest import free_port, wait_until
from tests.lifecycle.conftest import Cli, cli, cli_env, project  # noqa: F401 (fixtures)

HOSTILE = ["../../../outside/tier-escape", "a/b", "{tmp}/outside/abs-escape", ".hidden",
           "tier\\x", "x" * (TIER_NAME_MAX + 1), "llmstack", "ti\x01er", "café"]


def _stack(name: str) -> str:
    """A stack whose fast tier (preloaded at start: its log is written at once) is ``name``;
    its llama-server is /bin/false, which fails at once and needs no model file."""
    return (f"[DEFAULT]\nllama_server_bin = /bin/false\n\n[{name}]\nrole = fast\n"
            "hf_repo = org/m\nhf_file = m.gguf\n")


def _files(top: Path) -> set[Path]:
    return {p for p in top.rglob("*") if not p.is_dir()}


def test_start_detach_refuses_a_tier_name_that_is_a_path(
        cli: Cli, project: Path, tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "LLMSTACK_CACHE_DIR": str(tmp_path / "cache"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    ini = project / ".llmstack" / "models.ini"
    ini.write_text(_stack("tier-ok"))  # the control: this name's log is written
    port = str(free_port())
    started = cli("start", "--detach", "--port", port, env=env)
    assert started.returncode == 0, started.stderr
    wait_until(lambda: (project / ".llmstack" / "logs" / "tier-ok.log").exists(), 30,
               "the tier's log in the project")
    assert cli("stop", env=env).returncode == 0
    (tmp_path / "outside").mkdir()
    for name in HOSTILE:
        name = name.format(tmp=tmp_path)
        ini.write_text(_stack(name))
        before = _files(tmp_path)
        refused = cli("start", "--detach", "--port", port, env=env)
        assert refused.returncode == 2, (name, refused.stderr)
        assert f"models.ini:4: [{name}] tier name {name!r} " in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        assert _files(tmp_path) == before, name
    assert not any((tmp_path / "outside").iterdir())


@pytest.mark.parametrize("name", ["code-fast", "plan_2", "v1.5", "A", "_x", "9", "x" * TIER_NAME_MAX])
def test_a_tier_name_is_letters_digits_dash_underscore_dot(name: str) -> None:
    stack = parse_stack(f"[{name}]\nhf_repo = org/m\nhf_file = m.gguf\n")
    assert stack.tiers[0].name == name


@pytest.mark.parametrize("name", [n for n in HOSTILE if "{" not in n] + ["-x", "a:b", "a b"])
def test_any_other_tier_name_is_a_file_line_error(name: str) -> None:
    with pytest.raises(ModelsIniError) as info:
        parse_stack(f"; a comment\n[{name}]\nhf_repo = org/m\nhf_file = m.gguf\n", "t.ini")
    assert str(info.value).startswith(f"t.ini:2: [{name}] tier name {name!r} "), info.value


@given(st.text(max_size=300))
def test_a_model_id_is_one_file_name_in_the_log_dir(model: str) -> None:
    name = file_name(model)
    assert set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-%~")
    assert name and not name.startswith(".") and len(name) <= MAX_NAME_CHARS
    path = log_file(Path("/logs"), model)
    assert path.parent == Path("/logs") and len((path.name + ".1").encode()) <= 255


@given(st.text(max_size=60), st.text(max_size=60))
def test_different_model_ids_get_different_file_names(a: str, b: str) -> None:
    if a != b:
        assert file_name(a) != file_name(b)


def test_a_model_id_that_is_a_name_keeps_it_and_one_with_a_slash_is_escaped() -> None:
    assert file_name("code-fast") == "code-fast"
    assert file_name("org/model") == "org%2Fmodel"
    assert file_name("../../x") == "%2E.%2F..%2Fx"
    assert file_name("") == "%"
    long = file_name("y" * 500)
    assert len(long) == MAX_NAME_CHARS and long != file_name("y" * 501)


def test_the_manager_keeps_every_model_log_in_its_log_dir(tmp_path: Path) -> None:
    logs = tmp_path / "a" / "logs"
    models = {m: ModelSpec(id=m, cmd=(sys.executable,)) for m in
              ("org/model", "../../escape", str(tmp_path / "abs"), "peer/../../x")}
    manager = Manager(SwapperConfig(models=models, log_dir=str(logs)))
    for model in models:
        sink = manager.log_for(model)
        sink.write("a line")
        assert sink.path is not None and sink.path.parent == logs
        sink.close()
    assert sorted(os.listdir(logs)) == sorted(f"{file_name(m)}.log" for m in models)
    assert {p.relative_to(tmp_path) for p in _files(tmp_path)} == {
        Path("a/logs") / f"{file_name(m)}.log" for m in models}
