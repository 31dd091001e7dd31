"""The built-in demo stack: three chat tiers, an embedding and a rerank tier on tiny models
(made on first use: :mod:`llmstack.models.demo`)."""

from __future__ import annotations

from importlib import resources

from .ini import parse_stack
from .schema import Stack

DEMO_SOURCE = "<built-in demo models.ini>"

BANNER = (
    "llmstack is serving the built-in DEMO stack: tiny self-made models that answer gibberish.\n"
    "  Try:  curl -s http://{host}:{port}/v1/chat/completions -d "
    "'{{\"model\":\"auto\",\"messages\":[{{\"role\":\"user\",\"content\":\"Say hello\"}}]}}'\n"
    "  Real models: `llmstack setup` in your project (models.ini, downloads, opencode.json,\n"
    "  background stack), then `opencode`.")


def demo_text() -> str:
    return resources.files("llmstack").joinpath("data/demo-models.ini").read_text()


def demo_stack() -> Stack:
    return parse_stack(demo_text(), DEMO_SOURCE)
