"""A hosted tier beside a real local tier: no process, no eviction, no churn."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.hosted.conftest import Provider, needs_litellm, post

pytestmark = pytest.mark.real


@pytest.fixture
def mixed(tmp_path: Path, provider: Provider, serve_ini, llama_server_bin: str,
          tiny_models: dict[str, Path]) -> Server:
    """A hosted fast tier and a local (real llama-server) agent tier."""
    needs_litellm()
    snapshot = tmp_path / "hub" / "models--t--tiny" / "snapshots" / "0"
    snapshot.mkdir(parents=True)
    shutil.copy(tiny_models["a"], snapshot / "tiny-agent.gguf")
    return serve_ini(f"""\
[DEFAULT]
threads = 1
n_gpu_layers = 0
cache_type_k = f16
cache_type_v = f16

[ROUTING]
high_fidelity_ceiling = 0
mid_fidelity_ceiling = 1

[fast]
role = fast
model = openai/fake-fast
api_base = {provider.base}/v1

[agent]
role = agent
hf_repo = t/tiny
hf_file = tiny-agent.gguf
ctx_size = 2048
""", {"HF_HUB_CACHE": str(tmp_path / "hub"), "LLMSTACK_LLAMA_SERVER": llama_server_bin,
      "OPENAI_API_KEY": "sk-test"})


def test_local_and_hosted_tiers_alternate_without_churn(mixed: Server) -> None:
    assert mixed.running() == {}  # a hosted fast tier: nothing to preload
    pids = set()
    for _ in range(10):
        for tier in ("agent", "fast"):
            status, _, body = post(mixed.base, "/v1/chat/completions", {
                "model": tier, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
            assert status == 200, body
            assert json.loads(body)["choices"][0]["message"]["name"] == tier
        running = mixed.running()
        assert set(running) == {"agent"}  # the hosted tier never has a process
        pids.add(running["agent"]["pid"])
    assert len(pids) == 1
    kinds = Counter(e["kind"] for e in json.loads(mixed.get("/events")[2]))
    assert kinds["model_starting"] == 1 and kinds["model_stopping"] == 0, kinds
