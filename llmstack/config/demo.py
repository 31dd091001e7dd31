"""The built-in demo stack: three chat tiers, an embedding and a rerank tier on tiny models made on first use."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .ini import Stack, parse_stack
from ..models.llama_server import cache_dir
from ..models.tiny_gguf import ensure_tiny_model

DEMO_SOURCE = "<built-in demo models.ini>"
_SEEDS = {"fast": 1, "agent": 2, "plan": 3, "embed": 4, "rerank": 5}

BANNER = """\
llmstack is serving the built-in DEMO stack: tiny self-made models that answer gibberish.
  Try:  curl -s http://{host}:{port}/v1/chat/completions -d '{{"model":"auto","messages":[{{"role":"user","content":"Say hello"}}]}}'
  Real models: `llmstack setup` in your project (models.ini, downloads, opencode.json,
  background stack), then `opencode`."""


def demo_text() -> str:
    return resources.files("llmstack").joinpath("data/demo-models.ini").read_text()


def demo_stack() -> Stack:
    return parse_stack(demo_text(), DEMO_SOURCE)


def demo_files(stack: Stack) -> dict[str, Path | None]:
    """Make (once) and return the tiny model file of every demo tier."""
    directory = cache_dir() / "demo"
    return {t.name: ensure_tiny_model(directory, str(t.hf_file).removesuffix(".gguf"),
                                      seed=_SEEDS.get(t.name, 0), context_length=131072)
            for t in stack.tiers}
