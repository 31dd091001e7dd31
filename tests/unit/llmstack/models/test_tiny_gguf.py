"""Tiny GGUF generator and GGUF memory accounting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter, TokenType

from llmstack.models.gguf_info import GGUFInfo, kv_cache_bytes, read_gguf_info, tier_memory_mb
from llmstack.models.tiny_gguf import (
    EOS_ID,
    IM_END_ID,
    build_vocab,
    ensure_tiny_model,
    unsampleable_ids,
    write_tiny_gguf,
)


def _field(path: Path, key: str):
    return GGUFReader(path).fields[key].contents()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def test_writes_a_small_gguf_atomically(tiny: Path) -> None:
    assert tiny.read_bytes()[:4] == b"GGUF"
    assert 500_000 < tiny.stat().st_size < 2_000_000
    assert [p.name for p in tiny.parent.iterdir()] == ["tiny.gguf"]


def test_vocab_is_spm_with_all_byte_tokens(tiny: Path) -> None:
    tokens = _field(tiny, "tokenizer.ggml.tokens")
    types = _field(tiny, "tokenizer.ggml.token_type")
    assert _field(tiny, "tokenizer.ggml.model") == "llama"
    kind = dict(zip(tokens, types, strict=True))
    assert all(kind[f"<0x{b:02X}>"] == TokenType.BYTE for b in range(256))
    for special in ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"):
        assert special in kind
    assert "\u2581" in kind
    assert all(chr(c) in kind for c in range(0x21, 0x7F))
    assert sum(t.startswith("\u2581") and len(t) > 1 for t in tokens) >= 150


def test_chatml_template_is_present(tiny: Path) -> None:
    template = _field(tiny, "tokenizer.chat_template")
    assert "<|im_start|>" in template and "add_generation_prompt" in template


def test_only_normal_tokens_are_sampleable(tiny: Path) -> None:
    _, _, types = build_vocab()
    banned = unsampleable_ids(types, allow_eos=False)
    assert EOS_ID in banned and IM_END_ID in banned
    assert len(banned) == 256 + 5
    output = next(t for t in GGUFReader(tiny).tensors if t.name == "output.weight").data
    assert np.all(output[banned, 0] < 0) and np.all(output[banned, 1:] == 0)
    allowed = sorted(set(range(len(types))) - set(banned))
    assert np.all(output[allowed, 0] == 0)


def test_allow_eos_unbans_end_tokens() -> None:
    _, _, types = build_vocab()
    banned = unsampleable_ids(types, allow_eos=True)
    assert EOS_ID not in banned and IM_END_ID not in banned
    assert len(banned) == 256 + 3


def test_seeds_and_sizes_give_distinct_files(tmp_path: Path) -> None:
    variants = [dict(seed=0), dict(seed=1), dict(seed=0, dim=128), dict(seed=0, layers=3)]
    contents = [write_tiny_gguf(tmp_path / f"{i}.gguf", **v).read_bytes()
                for i, v in enumerate(variants)]
    assert len(set(contents)) == len(variants)
    assert write_tiny_gguf(tmp_path / "again.gguf").read_bytes() == contents[0]


def test_gguf_info_reads_back_the_parameters(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", layers=3, dim=96, ff=128, heads=6,
                           kv_heads=2, context_length=2048)
    assert read_gguf_info(path) == GGUFInfo(
        architecture="llama", n_layers=3, n_head=6, n_head_kv=2, embedding_length=96,
        head_dim=16, context_length=2048, file_size_bytes=path.stat().st_size,
    )


def test_gguf_info_prefers_key_length(tmp_path: Path) -> None:
    path = tmp_path / "meta.gguf"
    writer = GGUFWriter(path, "qwen3")
    writer.add_block_count(28)
    writer.add_context_length(40960)
    writer.add_embedding_length(1024)
    writer.add_head_count(16)
    writer.add_head_count_kv(8)
    writer.add_key_length(128)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_gguf_info(path)
    assert (info.architecture, info.head_dim, info.n_head_kv) == ("qwen3", 128, 8)


def test_ensure_tiny_model_makes_it_once(tmp_path: Path) -> None:
    first = ensure_tiny_model(tmp_path, "a", seed=3)
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    again = ensure_tiny_model(tmp_path, "a", seed=3)
    assert again == first and (again.stat().st_mtime_ns, again.stat().st_ino) == stamp
    other = ensure_tiny_model(tmp_path, "a", seed=4)
    assert other.read_bytes() == write_tiny_gguf(tmp_path / "s4.gguf", seed=4).read_bytes()


def test_ensure_tiny_model_replaces_a_truncated_file(tmp_path: Path) -> None:
    path = ensure_tiny_model(tmp_path, "b")
    whole = path.read_bytes()
    path.write_bytes(whole[:100])
    assert ensure_tiny_model(tmp_path, "b").read_bytes() == whole


def _info(layers: int, kv_heads: int, head_dim: int) -> GGUFInfo:
    return GGUFInfo("llama", layers, kv_heads * 4, kv_heads, head_dim * kv_heads * 4,
                    head_dim, 8192, 0)


def test_kv_cache_bytes_known_values() -> None:
    llama2_7b = _info(layers=32, kv_heads=32, head_dim=128)
    assert kv_cache_bytes(llama2_7b, 4096) == 2 * 1024**3
    q8_side = 32 * 4096 * 32 * 128 * 34 // 32
    assert kv_cache_bytes(llama2_7b, 4096, "q8_0", "q8_0") == 2 * q8_side
    assert kv_cache_bytes(llama2_7b, 4096, "q8_0", "f16") == 1024**3 + q8_side
    assert kv_cache_bytes(llama2_7b, 4096, "f32", "f32") == 4 * 1024**3
    assert kv_cache_bytes(llama2_7b, 4096, "q4_0", "q4_0") == 2 * 1024**3 * 18 // 64
    llama3_8b = _info(layers=32, kv_heads=8, head_dim=128)
    assert kv_cache_bytes(llama3_8b, 8192) == 1024**3
    assert kv_cache_bytes(_info(layers=1, kv_heads=1, head_dim=1), 1, "q8_0", "q8_0") == 3
    with pytest.raises(ValueError, match="unknown KV cache type"):
        kv_cache_bytes(llama3_8b, 8192, "q3_k")


def test_tier_memory_mb_rounds_up_and_adds_overhead() -> None:
    assert tier_memory_mb(1024**3, 1024**3, overhead_mb=0) == 2048
    assert tier_memory_mb(1, 0, overhead_mb=10) == 11
    assert tier_memory_mb(0, 0) > 0


def test_the_token_type_constants_are_gguf_s() -> None:
    from llmstack.models import tiny_gguf
    assert (tiny_gguf.NORMAL, tiny_gguf.UNKNOWN, tiny_gguf.CONTROL, tiny_gguf.BYTE) == (
        TokenType.NORMAL, TokenType.UNKNOWN, TokenType.CONTROL, TokenType.BYTE)
