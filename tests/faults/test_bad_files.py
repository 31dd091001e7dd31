"""Bad models.ini files are one clear line and exit 2; bad values are file:line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmstack.config.ini import ModelsIniError, parse_stack
from llmstack.config.schema import CACHE_TYPES
from tests.conftest import stop_server
from tests.front_door_support import FAST_INI, start_fake_stack


def serve(ini: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmstack", "serve", "--models-ini", str(ini)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("content, expected", [
    (b"[DEFAULT]\nhost = 127.0.0.1\n\x7fELF\x02\x01\x01\x00\x00\x00\n", ":3: binary data"),
    (b"[DEFAULT]\n; caf\xe9 in latin-1\nhost = 127.0.0.1\n", ":2: not UTF-8"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", ":1: not UTF-8"),
    (None, ": not a regular file (a directory)"),
])
def test_an_unreadable_models_ini_is_one_line_and_exit_2(tmp_path: Path, content: bytes | None,
                                                          expected: str) -> None:
    ini = tmp_path / "models.ini"
    if content is None:
        ini.mkdir()
    else:
        ini.write_bytes(content)
    done = serve(ini)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{ini}{expected}" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("key", ["cache_type_k", "cache_type_v"])
def test_an_invalid_cache_type_is_a_file_line_error(key: str) -> None:
    with pytest.raises(ModelsIniError) as caught:
        parse_stack(f"[DEFAULT]\nthreads = 1\n{key} = q8\n", "m.ini")
    assert str(caught.value).startswith(f"m.ini:3: [DEFAULT] {key}: unknown KV cache type 'q8'")
    assert "q8_0" in str(caught.value)
    for valid in CACHE_TYPES:
        assert getattr(parse_stack(f"[DEFAULT]\n{key} = {valid}\n"), key) == valid


def test_an_invalid_cache_type_is_refused_at_start_and_on_reload(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ini"
    bad.write_text("[DEFAULT]\ncache_type_v = turbo\n")
    done = serve(bad)
    assert done.returncode == 2 and f"{bad}:2: [DEFAULT] cache_type_v" in done.stderr

    stack = start_fake_stack(tmp_path / "stack")
    try:
        ini = tmp_path / "stack" / "models.ini"
        ini.write_text(FAST_INI.replace("[DEFAULT]\n", "[DEFAULT]\ncache_type_k = q3_k\n"))
        status, _, body = stack.post("/reload")
        assert status == 400, body
        assert f"{ini}:2: [DEFAULT] cache_type_k" in json.loads(body)["error"]["message"]
        assert stack.post("/v1/chat/completions", {"model": "code-fast", "messages": []})[0] == 200
    finally:
        stop_server(stack)


def test_models_route_lists_auto_like_v1_models(tmp_path: Path) -> None:
    stack = start_fake_stack(tmp_path)
    try:
        v1 = json.loads(stack.get("/v1/models")[2])["data"]
        plain = json.loads(stack.get("/models")[2])["data"]
        assert plain == v1 and plain[0]["id"] == "auto"
    finally:
        stop_server(stack)
