"""The demo stack's model files: tiny GGUFs made once into llmstack's cache."""

from __future__ import annotations

from pathlib import Path

from ..config.schema import Stack
from .tiny_gguf import ensure_tiny_model

_SEEDS = {"fast": 1, "agent": 2, "plan": 3, "embed": 4, "rerank": 5}


def demo_files(stack: Stack, cache: Path) -> dict[str, Path | None]:
    """Make (once, under ``<cache>/demo``) and return the tiny model file of every demo tier."""
    directory = cache / "demo"
    return {t.name: ensure_tiny_model(directory, str(t.hf_file).removesuffix(".gguf"),
                                      seed=_SEEDS.get(t.name, 0), context_length=131072)
            for t in stack.tiers}
