"""The built-in demo stack: three chat tiers on SmolLM2-135M-Instruct, an embedding and a
rerank tier on tiny models (the files: :mod:`llmstack.models.demo`)."""

from __future__ import annotations

from importlib import resources

from .ini import parse_stack
from .schema import Stack

DEMO_SOURCE = "<built-in demo models.ini>"
TRY = ("  Try:  curl -s http://{host}:{port}/v1/chat/completions -d "
       "'{{\"model\":\"auto\",\"messages\":[{{\"role\":\"user\",\"content\":"
       "\"What is the capital of France?\"}}]}}'\n")
NEXT = ("  Real models: `llmstack setup` in your project (models.ini, downloads, opencode.json,\n"
        "  background stack), then `opencode`.")
BANNER = ("llmstack is serving the built-in DEMO stack on SmolLM2-135M-Instruct, a 135M-parameter "
          "instruct model\n  (quick, often right on simple questions, sometimes confidently "
          "wrong).\n" + TRY + NEXT)
TINY_BANNER = ("llmstack is serving the built-in DEMO stack on tiny self-made models that answer "
               "gibberish.\n" + TRY + NEXT)


def banner(host: str, port: int, real: bool) -> str:
    """What ``serve`` prints when it serves the demo: on the real model, or the tiny ones."""
    return (BANNER if real else TINY_BANNER).format(host=host, port=port)


def demo_text() -> str:
    return resources.files("llmstack").joinpath("data/demo-models.ini").read_text()


def demo_stack() -> Stack:
    return parse_stack(demo_text(), DEMO_SOURCE)
