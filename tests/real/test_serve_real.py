"""``llmstack serve`` end to end with the real llama-server and tiny models (the tests' tiny
stack, :data:`tests.conftest.TINY_STACK_INI`: these tests are about processes and windows)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.conftest import TINY_STACK_INI, start_llmstack, stop_server, tiny_stack, wait_until

pytestmark = pytest.mark.real
CHAT = "/v1/chat/completions"


def ask(server, content: str, model: str = "auto", **extra) -> tuple[int, dict, dict]:
    status, headers, body = server.post(CHAT, {"model": model, "max_tokens": 8, **extra,
                                               "messages": [{"role": "user", "content": content}]})
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(body)


@pytest.fixture
def serve(tmp_path: Path, llama_server_bin: str):
    """Factory: ``llmstack serve --port P [args]`` in a subprocess (cwd without a models.ini),
    the tiny stack unless ``args`` name a models.ini."""
    started = []
    hub = tiny_stack(tmp_path / "hub")

    def run(*args: str, env: dict[str, str] | None = None):
        args = args or ("--models-ini", str(TINY_STACK_INI))
        server = start_llmstack(tmp_path / f"serve{len(started)}.log", *args,
                                env={"LLMSTACK_LLAMA_SERVER": llama_server_bin, **hub, **(env or {})})
        started.append(server)
        return server

    yield run
    for server in started:
        stop_server(server)


def test_tiny_stack_routes_swaps_and_names_tiers(serve) -> None:
    server = serve()
    status, headers, body = ask(server, "Say hello in one word")
    assert status == 200
    assert headers["x-llmstack-tier"] == "fast" and int(headers["x-llmstack-tokens"]) > 0
    assert body["choices"][0]["message"]["name"] == "fast"

    ten_turns = [{"role": role, "content": "hi"} for _ in range(10) for role in ("user", "assistant")]
    status, headers, raw = server.post(CHAT, {"model": "auto", "max_tokens": 8,
                                              "messages": ten_turns[:-1]})
    body = json.loads(raw)
    assert status == 200 and headers["x-llmstack-tier"] == "agent"  # the multi-turn floor
    assert body["choices"][0]["message"]["name"] == "agent"
    assert set(server.running()) == {"fast", "agent"}

    fast_pid = server.running()["fast"]["pid"]
    status, _, body = ask(server, "Plan something", model="plan")
    assert status == 200 and body["choices"][0]["message"]["name"] == "plan"
    running = server.running()
    assert set(running) == {"fast", "plan"} and running["fast"]["pid"] == fast_pid

    status, _, stream = server.post(CHAT, {"model": "auto", "stream": True, "max_tokens": 4,
                                           "messages": [{"role": "user", "content": "Say hello"}]})
    first = json.loads(stream.split(b"\n\n")[0].removeprefix(b"data: "))
    assert status == 200 and first["choices"][0]["delta"]["name"] == "fast"

    models = [m["id"] for m in json.loads(server.get("/v1/models")[2])["data"]]
    assert models[0] == "auto" and {"fast", "agent", "plan", "small", "smart"} <= set(models)


def test_context_too_large_is_a_client_error(serve) -> None:
    server = serve()
    status, _, body = ask(server, "word " * 60000)  # ~75k tokens: larger than every window
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "context_length_exceeded"


def test_sighup_restarts_only_the_changed_tier(serve, tmp_path: Path) -> None:
    text = TINY_STACK_INI.read_text()
    ini = tmp_path / "models.ini"
    ini.write_text(text)
    server = serve("--models-ini", str(ini))
    assert server.get("/models.ini")[2] == ini.read_bytes()
    assert ask(server, "word " * 8000)[0] == 200  # agent up beside fast
    before = {m: row["pid"] for m, row in server.running().items()}
    assert set(before) == {"fast", "agent"}

    ini.write_text(text.replace("temp=0.5, top_p=0.85", "temp=0.4, top_p=0.85"))
    server.popen.send_signal(signal.SIGHUP)

    def agent_restarted() -> bool:
        row = server.running().get("agent")
        return bool(row) and row["pid"] != before["agent"] and row["state"] == "ready"

    wait_until(agent_restarted, 30, "the agent tier to restart with its new sampler")
    after = server.running()
    assert after["fast"]["pid"] == before["fast"]
    assert "0.4" in after["agent"]["cmd"][after["agent"]["cmd"].index("--temp") + 1]

    ini.write_text(text.replace("ctx_size = 8192", "ctx_size = 8k"))
    status, _, body = server.post("/reload")
    assert status == 400
    message = json.loads(body)["error"]["message"]
    assert f"{ini}:" in message and "ctx_size" in message
    assert server.running()["fast"]["pid"] == before["fast"]  # old config kept


def test_an_underestimated_prompt_steps_up_to_a_larger_window(serve) -> None:
    server = serve()
    # 30,000 characters: about 7,500 tokens by the chars/4 estimate (fits fast's 8192),
    # but the tiny vocabulary spends one token per character, so fast's llama-server refuses it.
    status, headers, body = ask(server, "x" * 30000)
    assert status == 200, body
    assert headers["x-llmstack-tier"] == "agent"
    assert body["choices"][0]["message"]["name"] == "agent"
    steps = [e for e in json.loads(server.get("/events")[2]) if e["kind"] == "context_step_up"]
    assert steps and steps[0]["from_tier"] == "fast" and steps[0]["to_tier"] == "agent"


def test_auto_routes_around_a_tier_whose_file_is_absent(serve, tmp_path: Path) -> None:
    """One rung tier not downloaded once made every short ``auto`` request a 503
    ``model_not_downloaded``; now ``auto`` treats it as unavailable and says so."""
    ini = tmp_path / "models.ini"
    ini.write_text(TINY_STACK_INI.read_text()
                   .replace("hf_file = tiny-agent.gguf", "hf_file = absent.gguf")
                   .replace("high_fidelity_ceiling = 0", "high_fidelity_ceiling = 1000")
                   .replace("mid_fidelity_ceiling = 1", "mid_fidelity_ceiling = 2000"))
    server = serve("--models-ini", str(ini))
    status, headers, body = ask(server, "Say hello")
    assert status == 200, body
    assert headers["x-llmstack-tier"] == "fast"
    routed = [e for e in json.loads(server.get("/events")[2]) if e["kind"] == "routed"]
    assert routed[-1]["reason"] == ("high-fidelity tokens~2<=1000 (no ultra tier) "
                                    "(agent not downloaded)")
    status, _, body = ask(server, "Say hello", model="agent")  # by name: the tier's own error
    assert status == 503 and body["error"]["code"] == "model_not_downloaded"
    assert "llmstack download agent" in body["error"]["message"]
