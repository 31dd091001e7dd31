"""llama-swap's own example configs (vendored unchanged, see vendored/SOURCES.md).

Every file loads with llama-swap's semantics. Runnable ones then answer through
a real ``python -m swapper`` on the real llama-server: the test rewrites only
what cannot exist here (the llama-server binary path and the GGUF paths, to the
real binary and a tiny model; a docker or placeholder command, to the
llama-server it stands for), plus the two things this machine requires, each
named in ``rewrite``. Files left load-only say why in ``LOAD_ONLY``.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml

from swapper.yaml_config import load_yaml_config, parse_yaml_config

VENDORED = Path(__file__).parent / "vendored"
EXAMPLES = sorted(p.relative_to(VENDORED).as_posix() for p in VENDORED.rglob("*.yaml"))
ENV = {"API_KEY_1": "sk-one", "API_KEY_2": "sk-two", "OPENROUTER_API_KEY": "sk-or"}
LOAD_ONLY = {  # why these are not run here (llama-swap could not run them here either)
    "docs/configuration/block3.yaml": "llama-server rejects its '--PORT' (upper case)",
    "docs/examples/speculative-decoding/block1.yaml": "CUDA devices (--device CUDA0)",
    "docs/examples/speculative-decoding/block2.yaml": "no proxy for its fixed port 9602",
}
RUN = {  # file -> model ids (and aliases) asked in turn; each one swaps the last out
    # Not gpt-oss-120b: its proxy is port 8999 while its command listens on ${PORT}, so
    # llama-swap too waits out healthCheckTimeout on it; the peers' models are remote.
    "config.example.yaml": ["docker-llama", "unlisted-model"],
    "docs/configuration/block1.yaml": ["model1"],
    "docs/configuration/block2.yaml": ["model1", "model2", "model3"],
    "docs/configuration/block4.yaml": ["Q3-30B-CODER-VLLM"],
    # Not qwen-coder-32B (alias coder): llama-server has since removed its --ctx-size-draft.
    "docs/examples/aider-qwq-coder/llama-swap.yaml": ["QwQ"],
}
ABSENT = ("docker", "some-upstream-server")
"""Commands whose binary is absent here; the test runs llama-server in their place."""
KEYED = {"config.example.yaml": "sk-hunter2"}  # files with apiKeys: the key the test sends


def _native_commands(text: str) -> str:
    """Each model command that starts an absent binary (a container, a placeholder) becomes
    the llama-server it stands for, listening on ``${PORT}``; a ``cmdStop`` of an absent
    binary is dropped (the process group is stopped instead, as with no ``cmdStop``)."""
    data = yaml.safe_load(text)
    changed = False
    for spec in (data.get("models") or {}).values():
        if str(spec.get("cmd", "")).split()[:1] and str(spec["cmd"]).split()[0] in ABSENT:
            spec["cmd"] = "llama-server --port ${PORT} --model absent.gguf"
            changed = True
        if str(spec.get("cmdStop", "")).split()[:1] and str(spec["cmdStop"]).split()[0] in ABSENT:
            del spec["cmdStop"]
            changed = True
    return yaml.safe_dump(data, sort_keys=False) if changed else text


def rewrite(text: str, llama_server: str, model: Path) -> str:
    """The vendored text with only what cannot exist here replaced."""
    text = _native_commands(text)
    text = re.sub(r"[^\s'\"]*llama-server[^\s'\"]*", llama_server, text)  # binaries absent here
    text = re.sub(r"[^\s'\"]+\.gguf", str(model), text)  # model files absent here
    # The current llama-server takes a value after --flash-attn; the examples predate that.
    text = re.sub(r"--flash-attn(?=\s+--|\s*$)", "--flash-attn auto", text, flags=re.M)
    # Two shared cores: every llama-server here runs single-threaded.
    return text.replace(llama_server, f"{llama_server} -t 1")


def test_every_file_is_accounted_for() -> None:
    assert set(EXAMPLES) == set(LOAD_ONLY) | set(RUN)


@pytest.mark.parametrize("name", EXAMPLES)
def test_vendored_config_loads(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    config = load_yaml_config(VENDORED / name)
    assert config.models


def test_config_example_has_llama_swaps_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    config = load_yaml_config(VENDORED / "config.example.yaml")
    gpt = config.models["gpt-oss-120b"]
    assert gpt.cmd[-4:] == ("--ctx-size", "16384", "--temperature", "0.7")  # model macros win
    assert gpt.metadata["port"] == "${PORT}"  # filled with the model's port when listed
    assert gpt.metadata["an_obj"]["c"] == [0.7, False, "model: gpt-oss-120b"]
    assert gpt.capabilities["context"] == 32000
    assert config.resolve("gpt-oss-120b:high") == "gpt-oss-120b"
    assert config.api_keys == ("sk-hunter2", config.api_keys[1], "sk-one", "sk-two")
    assert config.selectors["llm-plan"].targets == ("gpt-oss-120b", "z-ai/glm-4.7")
    assert config.resolve("z-ai/glm-4.7") == "openrouter/z-ai/glm-4.7"  # one peer has it
    assert config.models["openrouter/z-ai/glm-4.7"].headers["x-api-key"] == "sk-or"
    assert config.profiles["coding"].pins == {"llm-code": "gpt-oss-120b", "image-gen": None}
    assert config.preload == ()  # "llama" is a selector, not a model: warned, skipped
    warned = config.extra["unsupported"]
    assert "hooks.on_startup.preload[0]: unknown model 'llama', not preloaded" in warned
    assert "routing.scheduler.settings.fifo.priority.A: undefined model 'A', ignored" in warned
    assert "selectors.llama.targets[1]: undefined model 'modelA', ignored" in warned
    assert ("routing.router.settings.groups.group2.members[1]: undefined model 'modelA', "
            "ignored") in warned
    assert config.groups[1].members == ("docker-llama",)


def test_group_members_are_checked_as_llama_swap_checks_them() -> None:
    """Duplicates and a model in two groups are errors; undefined members are not."""
    base = """
        models: {a: {cmd: "srv ${PORT}"}, b: {cmd: "srv ${PORT}"}}
        groups:
          %s
        """
    with pytest.raises(ValueError, match="already in group"):
        parse_yaml_config(base % "{g1: {members: [a]}, g2: {members: [a]}}")
    with pytest.raises(ValueError, match="already in group"):
        parse_yaml_config(base % "{g1: {members: [a, a]}}")
    config = parse_yaml_config(base % "{g1: {members: [a, ghost]}}")
    assert config.groups[0].members == ("a",)


def test_config_example_serves_its_listing_and_profiles(swapper) -> None:
    """The example config runs: /v1/models shows capabilities, ${PORT}, selectors."""
    text = (VENDORED / "config.example.yaml").read_text()
    server = swapper(text, env=ENV)
    headers = {"authorization": "Bearer sk-hunter2"}

    def get(path: str) -> dict:
        req = urllib.request.Request(server.base + path, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    rows = {row["id"]: row for row in get("/v1/models")["data"]}
    assert rows["gpt-oss-120b"]["meta"]["port"] == 10001  # startPort, first model
    assert rows["gpt-oss-120b"]["meta"]["note"].startswith("The gpt-oss-120b is running on "
                                                           "port 10001")
    assert rows["gpt-oss-120b"]["capabilities"]["tools"] is True
    assert "unlisted-model" not in rows and "gpt-4o-mini" not in rows
    assert rows["coding-model"]["name"] == "Coding Model"
    assert get("/api/profiles")["profiles"][0]["name"] == "coding"


@pytest.mark.real
@pytest.mark.parametrize("name", sorted(RUN))
def test_vendored_config_models_answer(name: str, swapper, llama_server_bin: str,
                                       tiny_q8_model: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    text = (VENDORED / name).read_text()
    server = swapper(rewrite(text, llama_server_bin, tiny_q8_model), env=ENV)
    config = parse_yaml_config(text)
    headers = {"content-type": "application/json"}
    if name in KEYED:
        headers["authorization"] = f"Bearer {KEYED[name]}"
    for model in RUN[name]:
        payload = {"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
        req = urllib.request.Request(server.base + "/v1/chat/completions",
                                     json.dumps(payload).encode(), headers)
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert resp.status == 200
            answer = json.loads(resp.read())
        assert answer["choices"][0]["message"]["role"] == "assistant"
        running = urllib.request.Request(server.base + "/running", headers=headers)
        with urllib.request.urlopen(running, timeout=10) as resp:
            models = {row["model"] for row in json.loads(resp.read())["running"]}
        assert models == {config.resolve(model)}
