"""Issue 21's acceptance on the whole stack: ``llmstack serve`` (and ``llmstack restart``) with
the REAL llama-server and SmolLM2-135M-Instruct. Two tiers of the same model that cannot run
together (agent, plan): asking for plan swaps agent out; a session's next turn on agent then
finds its context restored, re-reading only the new turn (``timings``). Prompts are about 200
tokens (this CPU reads ~50-100 tokens/s with one thread); the sessions directory is the test's
own (``LLMSTACK_CACHE_DIR``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swapper.sessions.keys import session_key
from tests.conftest import Server, free_port, http, start_llmstack, stop_server

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]
CHAT = "/v1/chat/completions"
SNAPSHOT = "models--smol--lm2/snapshots/" + "0" * 40
SYSTEM = ("You are a careful coding agent working in a Python repository. Read the files you are "
          "given, keep changes small, explain each change in one sentence, and never invent APIs. "
          "The repository has a package named swapper with modules for configuration, a solver, a "
          "scheduler, child processes, an upstream HTTP client and a proxy. Tests live under tests. ")
INI = """\
[DEFAULT]
threads = 1
n_gpu_layers = 0
flash_attn = auto
session_cache_min_tokens = 32
{default}

[ROUTING]
high_fidelity_ceiling = 100
mid_fidelity_ceiling = 1000

[agent]
role = agent
hf_repo = smol/lm2
hf_file = smol.gguf
ctx_size = {window}
max_output_tokens = 8
sampler = temp=0

[plan]
role = plan
hf_repo = smol/lm2
hf_file = smol.gguf
ctx_size = 1024
max_output_tokens = 2
"""


def ini(default: str = "", window: int = 2048) -> str:
    return INI.format(default=default, window=window)


def conversation(*turns: str, long: bool = False) -> list[dict[str, str]]:
    """The system text, a first user message, then ``turns`` alternating assistant / user:
    about 200 tokens, or 450 when ``long`` (a next turn adds ~20: under 5 % of that)."""
    ask_for = ("Look at the scheduler and the solver, then list what each public function does "
               "and which tests cover it. ")
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": ask_for * (18 if long else 4)}]
    messages += [{"role": "assistant" if at % 2 == 0 else "user", "content": text}
                 for at, text in enumerate(turns)]
    return messages


def ask(server: Server | str, messages: list[dict[str, str]], model: str = "agent") -> dict[str, Any]:
    base = server if isinstance(server, str) else server.base
    status, _, body = http("POST", base + CHAT, {"model": model, "messages": messages,
                                                 "max_tokens": 8, "temperature": 0}, timeout=240)
    assert status == 200, body[:300]
    answer: dict[str, Any] = json.loads(body)
    return answer


def events(server: Server, model: str = "agent") -> list[dict[str, Any]]:
    """The session cache's events about ``model``."""
    return [e for e in json.loads(server.get("/events")[2])
            if e["kind"].startswith("session_") and e.get("model") in (model, None)]


def swap_back(server: Server | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Turn 1 on agent, plan (which swaps agent out), then turn 2 on agent: both answers."""
    first = ask(server, conversation(long=True))
    ask(server, [{"role": "user", "content": "hi"}], "plan")
    said = first["choices"][0]["message"]["content"]
    return first, ask(server, conversation(said, "Now the tests.", long=True))


def reread_share(answer: dict[str, Any]) -> float:
    """The share of the prompt read anew (the rest came from the cache)."""
    timings: dict[str, int] = answer["timings"]
    return float(timings["prompt_n"]) / (timings["cache_n"] + timings["prompt_n"])


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """A Hugging Face cache holding SmolLM2 as smol/lm2 (its own copy: a test changes its mtime)."""
    root = tmp_path_factory.mktemp("hub")
    (root / SNAPSHOT).mkdir(parents=True)
    shutil.copy(smollm2_gguf, root / SNAPSHOT / "smol.gguf")
    return root


@pytest.fixture
def env(tmp_path: Path, hub: Path, llama_server_bin: str) -> dict[str, str]:
    return {"LLMSTACK_LLAMA_SERVER": llama_server_bin, "HF_HUB_CACHE": str(hub),
            "LLMSTACK_CACHE_DIR": str(tmp_path / "cache")}


@pytest.fixture
def serve(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[[str], Server]]:
    """Factory: ``llmstack serve`` a models.ini text (the sessions under the test's cache)."""
    started: list[Server] = []

    def run(text: str) -> Server:
        path = tmp_path / f"models{len(started)}.ini"
        path.write_text(text)
        server = start_llmstack(tmp_path / f"serve{len(started)}.log", "--models-ini", str(path),
                                env=env)
        started.append(server)
        return server

    yield run
    for server in started:
        stop_server(server)


@pytest.mark.parametrize("cache", ["on", "off"])
def test_a_returning_turn_after_a_swap_rereads_only_what_is_new(serve: Callable[[str], Server],
                                                                cache: str) -> None:
    server = serve(ini(f"session_cache = {cache}"))
    first, second = swap_back(server)
    prompt = second["timings"]["cache_n"] + second["timings"]["prompt_n"]
    assert prompt > 400
    kinds = [e["kind"] for e in events(server)]
    if cache == "on":
        assert reread_share(second) <= 0.05, second["timings"]
        assert kinds == ["session_saved", "session_restored", "session_verified"]
        saved = events(server)[0]
        assert saved["model"] == "agent" and saved["tokens"] >= first["usage"]["prompt_tokens"]
        assert second["timings"]["cache_n"] >= saved["tokens"] - 1  # all it held but the last
        state = json.loads(server.get("/api/state")[2])["sessions"]
        assert state["models"]["agent"]["sessions"] == 1 and state["held"] == {"agent": 1}
        assert state["bytes"] == sum(p.stat().st_size for p in Path(state["root"]).rglob("*")
                                     if p.suffix in (".bin", ".json") and p.name != "key.json")
        metrics = server.get("/metrics")[2].decode()
        restored = next(e["tokens"] for e in events(server) if e["kind"] == "session_restored")
        assert f'swapper_session_tokens_restored_total{{model="agent"}} {restored}.0' in metrics
    else:
        assert second["timings"]["cache_n"] == 0 and second["timings"]["prompt_n"] == prompt
        assert kinds == [] and json.loads(server.get("/api/state")[2])["sessions"] is None


def test_a_changed_window_or_model_file_discards_the_saved_session(
        serve: Callable[[str], Server], tmp_path: Path, hub: Path) -> None:
    server = serve(ini())
    said = ask(server, conversation())["choices"][0]["message"]["content"]
    path = tmp_path / "models0.ini"
    path.write_text(ini(window=1536))
    assert server.post("/reload")[0] == 200  # agent restarts: saved under its old window
    second = ask(server, conversation(said, "Now the tests."))
    assert second["timings"]["cache_n"] == 0  # discarded, not restored
    found = events(server)
    assert [e["kind"] for e in found] == ["session_saved", "session_discarded"]
    assert found[1]["reason"] == "the settings changed (was -c 2048, now -c 1536)"

    assert server.post("/unload/agent")[0] == 200  # saved again, under the new window
    model = hub / SNAPSHOT / "smol.gguf"
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        third = ask(server, conversation(said, "Now the tests.", "ok", "And the solver?"))
    finally:
        os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert third["timings"]["cache_n"] == 0
    found = events(server)
    assert [e["kind"] for e in found][2:] == ["session_saved", "session_discarded"]
    assert found[3]["reason"] == "the model file changed"
    assert not list((tmp_path / "cache" / "sessions").glob("*/*.bin"))


def test_the_cap_holds_with_many_sessions_and_the_oldest_go_first(
        serve: Callable[[str], Server], tmp_path: Path) -> None:
    """One session measures a session's size; the cap is then set to fit three (a reload).
    Six more sessions, four slots, two stops: the disk never holds more than the cap, and the
    three used last are the ones kept."""
    server = serve(ini())
    root = tmp_path / "cache" / "sessions"

    def session(system: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": system}, {"role": "user", "content": "Summarise it."}]

    def on_disk() -> int:
        return sum(p.stat().st_size for p in root.rglob("*")
                   if p.suffix in (".bin", ".json", ".tmp") and p.name != "key.json")

    ask(server, session("You answer questions about module number 9 in one line."))
    assert server.post("/unload/agent")[0] == 200
    [measured] = events(server)
    cap = int(3.5 * measured["bytes"])
    (tmp_path / "models0.ini").write_text(ini(f"session_cache_max_gb = {cap / 1e9}"))
    assert server.post("/reload")[0] == 200
    systems = [f"You answer questions about module number {i} in one line." for i in range(6)]
    for batch in (systems[:4], systems[4:]):
        for system in batch:
            ask(server, session(system))
        assert server.post("/unload/agent")[0] == 200
        assert on_disk() <= cap
    state = json.loads(server.get("/api/state")[2])["sessions"]
    assert state["max_bytes"] == cap and state["sessions"] == 3 and state["bytes"] == on_disk()
    kept = {p.stem for p in root.glob("*/*.bin")}
    assert kept == {session_key(None, {"messages": session(s)}) for s in systems[3:]}
    evicted = [e for e in events(server) if e["kind"] == "session_discarded"]
    assert len(evicted) == 3 and all("least recently used" in e["reason"] for e in evicted)
    assert evicted[0]["session"] == measured["session"]  # the oldest first


def test_a_session_survives_llmstack_restart(tmp_path: Path, env: dict[str, str]) -> None:
    project = tmp_path / "project"
    (project / ".llmstack").mkdir(parents=True)
    (project / ".llmstack" / "models.ini").write_text(ini())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLMSTACK_", "OPENCODE_"))}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "llmstack", *args], cwd=project,
                              env={**clean, **env}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    cli("start", "--detach", "--port", str(port))
    try:
        said = ask(base, conversation(long=True))["choices"][0]["message"]["content"]
        cli("restart", "--detach", "--port", str(port))
        second = ask(base, conversation(said, "Now the tests.", long=True))
        assert reread_share(second) <= 0.05, second["timings"]
        log = (project / ".llmstack" / "logs" / "llmstack.log").read_text()
        assert '"kind": "session_saved"' in log and '"kind": "session_restored"' in log
        assert '"verdict": "ok"' in log
        shown = [line.strip() for line in cli("status").stdout.splitlines()
                 if line.strip().startswith(("sessions ", "[!] session"))]
        assert len(shown) == 1, shown  # the one line: saved against the cap, held now
        assert shown[0].startswith("sessions 1 saved, ")
        assert shown[0].endswith(f" in {Path(env['LLMSTACK_CACHE_DIR']) / 'sessions'}; held now: agent 1")
    finally:
        cli("stop")
