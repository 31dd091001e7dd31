"""Memory accounting from a GGUF file's metadata.

``read_gguf_info`` is the only function that touches a file; it reads the header's
key/values with :mod:`llmstack.models.gguf_header` (standard library, memory-mapped, tokenizer
arrays stepped over, no tensor data). The rest is pure arithmetic.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from .gguf_header import read_gguf_metadata

MIB = 1024 * 1024

DEFAULT_OVERHEAD_MB = 64
"""Per-process MiB on top of weights and KV cache: llama-server's own RSS is ~19 MB with a
0.8 MB model, and compute buffers grow with model width (a 415 MB model ran at 478 MB)."""

CACHE_TYPE_BYTES: dict[str, Fraction] = {
    "f32": Fraction(4),
    "f16": Fraction(2),
    "bf16": Fraction(2),
    "q8_0": Fraction(34, 32),
    "q4_0": Fraction(18, 32),
    "q4_1": Fraction(20, 32),
    "q5_0": Fraction(22, 32),
    "q5_1": Fraction(24, 32),
    "iq4_nl": Fraction(18, 32),
}
"""Bytes per element of each llama.cpp ``--cache-type-k/-v`` (block size over 32 elements)."""


@dataclass(frozen=True)
class GGUFInfo:
    """The numbers of a GGUF model that decide its memory footprint."""

    architecture: str
    n_layers: int
    n_head: int
    n_head_kv: int
    embedding_length: int
    head_dim: int
    context_length: int
    file_size_bytes: int


class _NotTokenizer:
    """Every key but the tokenizer's (vocabularies of 100k+ strings, never needed here)."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and not key.startswith("tokenizer.")


def read_gguf_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read a model's architecture and attention shape from its GGUF metadata."""
    path = Path(path)
    fields = read_gguf_metadata(path, _NotTokenizer())

    def value(key: str, default: int | None = None) -> int:
        content = fields.get(key)
        if content is None:
            if default is None:
                raise ValueError(f"{path}: GGUF metadata has no {key}")
            return default
        # Per-layer arrays (e.g. head_count_kv on hybrid models): take the largest.
        return int(max(content)) if isinstance(content, list) else int(content)

    if "general.architecture" not in fields:
        raise ValueError(f"{path}: GGUF metadata has no general.architecture")
    arch = str(fields["general.architecture"])
    n_head = value(f"{arch}.attention.head_count")
    embedding_length = value(f"{arch}.embedding_length")
    return GGUFInfo(
        architecture=arch,
        n_layers=value(f"{arch}.block_count"),
        n_head=n_head,
        n_head_kv=value(f"{arch}.attention.head_count_kv", n_head),
        embedding_length=embedding_length,
        head_dim=value(f"{arch}.attention.key_length", embedding_length // n_head),
        context_length=value(f"{arch}.context_length"),
        file_size_bytes=path.stat().st_size,
    )


def kv_cache_bytes(
    info: GGUFInfo, ctx_size: int, cache_type_k: str = "f16", cache_type_v: str = "f16",
) -> int:
    """Bytes of the K and V caches for ``ctx_size`` tokens, rounded up to a whole byte."""
    per_side = info.n_layers * ctx_size * info.n_head_kv * info.head_dim
    total = per_side * (_bytes_per_element(cache_type_k) + _bytes_per_element(cache_type_v))
    return math.ceil(total)


def _bytes_per_element(cache_type: str) -> Fraction:
    try:
        return CACHE_TYPE_BYTES[cache_type.lower()]
    except KeyError:
        raise ValueError(
            f"unknown KV cache type {cache_type!r}; known: {', '.join(CACHE_TYPE_BYTES)}"
        ) from None


def tier_memory_mb(
    weights_bytes: int, kv_bytes: int, overhead_mb: int = DEFAULT_OVERHEAD_MB,
) -> int:
    """MiB one llama-server child needs: weights + KV cache, rounded up, + overhead."""
    return math.ceil((weights_bytes + kv_bytes) / MIB) + overhead_mb
