"""Fixtures for llama-swap's example configs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_q8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose 32-wide heads take the examples' q8_0 KV cache."""
    from llmstack.models.tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny-q8.gguf", heads=2)
