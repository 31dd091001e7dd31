"""Tiny random-weight llama GGUF models that a real llama-server can load and serve.

The vocabulary is SentencePiece-style (``tokenizer.ggml.model = llama``) and always holds
the 256 ``<0xNN>`` byte tokens: without them llama.cpp finds no newline token and every
chat fails. Byte, unknown and control tokens are made unsampleable: every embedding
carries a constant on dim 0 and those tokens' output rows are negative on dim 0 only, so
generated text is printable ASCII that runs to ``max_tokens`` (``finish_reason
"length"``) unless ``allow_eos`` lets ``</s>`` and ``<|im_end|>`` be sampled.

numpy and gguf are imported only to write a model: checking that a cached one is current
reads its header with :mod:`llmstack.models.gguf_header`, so a serving process never loads them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .gguf_header import read_gguf_metadata

if TYPE_CHECKING:
    import numpy as np
    from gguf import GGUFWriter

PARAMS_KEY = "llmstack.tiny.params"
"""Custom metadata key holding the JSON of the parameters a file was made with."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# GGUF token types (``gguf.TokenType``'s values, fixed by the GGUF format)
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6

SPECIAL_TOKENS = (
    ("<unk>", UNKNOWN),
    ("<s>", CONTROL),
    ("</s>", CONTROL),
    ("<|im_start|>", CONTROL),
    ("<|im_end|>", CONTROL),
)
UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = range(len(SPECIAL_TOKENS))

_WORD_TEXT = """
the of and to in is you that it he was for on are as with his they at be this have from
or one had by word but not what all were we when your can said there use an each which
she do how their if will up other about out many then them these so some her would make
like him into time has look two more write go see number no way could people my than
first water been call who oil its now find long down day did get come made may part over
new sound take only little work know place year live me back give most very after thing
our just name good sentence man think say great where help through much before line
right too mean old any same tell boy follow came want show also around form three small
set put end does another well large must big even such because turn here why ask went
"""
WORDS = _WORD_TEXT.split()

_SPACE = "\u2581"  # SentencePiece's word-boundary marker, shown as a space
_DIM0_CONSTANT = 1.0  # added to every embedding on dim 0
_BANNED_DIM0_WEIGHT = -3.0  # output weight on dim 0 of unsampleable tokens
_EMBED_STD = 0.1
_LAYER_STD = 0.02
_OUTPUT_STD = 0.5


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    """Return (tokens, scores, token types) of the tiny SPM vocabulary."""
    tokens = [text for text, _ in SPECIAL_TOKENS]
    types = [int(kind) for _, kind in SPECIAL_TOKENS]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    normal = [_SPACE] + [chr(c) for c in range(0x21, 0x7F)] + [_SPACE + w for w in WORDS]
    tokens += normal
    types += [NORMAL] * len(normal)
    scores = [0.0] * (len(tokens) - len(normal)) + [-float(i) for i in range(len(normal))]
    return tokens, scores, types


def unsampleable_ids(types: list[int], *, allow_eos: bool) -> list[int]:
    """Token ids that generation must never produce (byte, unknown, control)."""
    banned = {
        i for i, kind in enumerate(types)
        if kind in (BYTE, UNKNOWN, CONTROL)
    }
    if allow_eos:
        banned -= {EOS_ID, IM_END_ID}
    return sorted(banned)


@dataclass(frozen=True)
class TinyShape:
    """What a tiny model is made of; equal shapes give byte-identical files. The defaults make
    a file of about 0.8 MB."""

    seed: int = 0
    layers: int = 2
    dim: int = 64
    ff: int = 256
    heads: int = 4
    kv_heads: int | None = None
    """None: as many as ``heads``."""
    context_length: int = 4096
    allow_eos: bool = False

    def resolved(self) -> TinyShape:
        """``kv_heads`` filled in and the sizes checked (ValueError)."""
        shape = replace(self, kv_heads=self.heads if self.kv_heads is None else self.kv_heads)
        assert shape.kv_heads is not None
        if shape.dim % shape.heads or shape.heads % shape.kv_heads:
            raise ValueError(f"dim ({shape.dim}) must divide by heads ({shape.heads}) and heads "
                             f"by kv_heads ({shape.kv_heads})")
        return shape


def _random_weights(rng: np.random.Generator, n_vocab: int, banned: list[int],
                    shape: TinyShape) -> dict[str, np.ndarray]:
    """Tensors in GGUF order; numpy shapes are the reverse of ggml's ``ne``."""
    import numpy as np

    layers, dim, ff, heads = shape.layers, shape.dim, shape.ff, shape.heads
    kv_heads = shape.kv_heads or heads

    def normal(std: float, *shape: int) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    head_dim = dim // heads
    embed = normal(_EMBED_STD, n_vocab, dim)
    embed[:, 0] = _DIM0_CONSTANT
    output = normal(_OUTPUT_STD, n_vocab, dim)
    output[:, 0] = 0.0
    output[banned] = 0.0
    output[banned, 0] = _BANNED_DIM0_WEIGHT
    ones = np.ones(dim, dtype=np.float32)
    tensors = {"token_embd.weight": embed, "output_norm.weight": ones, "output.weight": output}
    for b in range(layers):
        p = f"blk.{b}."
        tensors |= {
            p + "attn_norm.weight": ones,
            p + "attn_q.weight": normal(_LAYER_STD, heads * head_dim, dim),
            p + "attn_k.weight": normal(_LAYER_STD, kv_heads * head_dim, dim),
            p + "attn_v.weight": normal(_LAYER_STD, kv_heads * head_dim, dim),
            p + "attn_output.weight": normal(_LAYER_STD, dim, heads * head_dim),
            p + "ffn_norm.weight": ones,
            p + "ffn_gate.weight": normal(_LAYER_STD, ff, dim),
            p + "ffn_up.weight": normal(_LAYER_STD, ff, dim),
            p + "ffn_down.weight": normal(_LAYER_STD, dim, ff),
        }
    return tensors


def write_tiny_gguf(path: str | os.PathLike[str], **shape: Any) -> Path:
    """Write a random llama GGUF to ``path`` atomically and return the path; ``shape``: the
    fields of :class:`TinyShape` (seed, layers, dim, ff, heads, kv_heads, context_length,
    allow_eos). A different seed or size gives different bytes."""
    return _write(Path(path), TinyShape(**shape).resolved())


def _write(path: Path, shape: TinyShape) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    tokens, scores, types = build_vocab()
    tensors = _random_weights(np.random.default_rng(shape.seed), len(tokens),
                              unsampleable_ids(types, allow_eos=shape.allow_eos), shape)
    with _quiet_writer():
        writer = GGUFWriter(None, "llama")
        writer.add_name(f"llmstack-tiny-seed{shape.seed}")
        writer.add_string(PARAMS_KEY, json.dumps(asdict(shape), sort_keys=True))
        writer.add_context_length(shape.context_length)
        writer.add_embedding_length(shape.dim)
        writer.add_block_count(shape.layers)
        writer.add_feed_forward_length(shape.ff)
        writer.add_head_count(shape.heads)
        writer.add_head_count_kv(shape.kv_heads or shape.heads)
        writer.add_rope_dimension_count(shape.dim // shape.heads)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(len(tokens))
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(UNK_ID)
        writer.add_bos_token_id(BOS_ID)
        writer.add_eos_token_id(EOS_ID)
        writer.add_add_bos_token(False)
        writer.add_chat_template(CHATML_TEMPLATE)
        for name, array in tensors.items():
            writer.add_tensor(name, array)
        return _write_atomically(writer, path)


def _write_atomically(writer: GGUFWriter, path: Path) -> Path:
    """Write through a temp file in ``path``'s directory, then ``os.replace`` it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def _quiet_writer() -> Iterator[None]:
    """Hide the gguf writer's INFO lines ("Writing the following files", ...) from our logs."""
    writer_log = logging.getLogger("gguf.gguf_writer")
    level = writer_log.level
    writer_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        writer_log.setLevel(level)


def _recorded_params(path: Path) -> dict[str, object] | None:
    """The parameters stored in a tiny model file, or None if unreadable or foreign."""
    try:
        recorded = read_gguf_metadata(path, {PARAMS_KEY}).get(PARAMS_KEY)
        return None if not isinstance(recorded, str) else json.loads(recorded)
    except (OSError, ValueError):
        return None


def ensure_tiny_model(cache_dir: str | os.PathLike[str], name: str, **shape: Any) -> Path:
    """Return ``<cache_dir>/<name>.gguf``, writing it unless a complete copy made with
    the same :class:`TinyShape` is already there."""
    path = Path(cache_dir) / f"{name}.gguf"
    wanted = TinyShape(**shape).resolved()
    if path.is_file() and _recorded_params(path) == asdict(wanted):
        return path
    return _write(path, wanted)
