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

import inspect
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from typing import TYPE_CHECKING

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

WORDS = """
the of and to in is you that it he was for on are as with his they at be this have from
or one had by word but not what all were we when your can said there use an each which
she do how their if will up other about out many then them these so some her would make
like him into time has look two more write go see number no way could people my than
first water been call who oil its now find long down day did get come made may part over
new sound take only little work know place year live me back give most very after thing
our just name good sentence man think say great where help through much before line
right too mean old any same tell boy follow came want show also around form three small
set put end does another well large must big even such because turn here why ask went
""".split()

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


def _random_weights(
    rng: np.random.Generator, *, n_vocab: int, banned: list[int],
    layers: int, dim: int, ff: int, heads: int, kv_heads: int,
) -> dict[str, np.ndarray]:
    """Tensors in GGUF order; numpy shapes are the reverse of ggml's ``ne``."""
    import numpy as np

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


def write_tiny_gguf(
    path: str | os.PathLike[str], *, seed: int = 0, layers: int = 2, dim: int = 64,
    ff: int = 256, heads: int = 4, kv_heads: int | None = None,
    context_length: int = 4096, allow_eos: bool = False,
) -> Path:
    """Write a random llama GGUF to ``path`` atomically and return the path.

    Equal parameters give byte-identical files; a different seed or size gives different
    bytes. Defaults make a file of about 0.8 MB.
    """
    kv_heads = heads if kv_heads is None else kv_heads
    if dim % heads or heads % kv_heads:
        raise ValueError(
            f"dim ({dim}) must divide by heads ({heads}) and heads by kv_heads ({kv_heads})"
        )
    params = dict(seed=seed, layers=layers, dim=dim, ff=ff, heads=heads, kv_heads=kv_heads,
                  context_length=context_length, allow_eos=allow_eos)
    import numpy as np
    from gguf import GGUFWriter

    tokens, scores, types = build_vocab()
    tensors = _random_weights(
        np.random.default_rng(seed), n_vocab=len(tokens),
        banned=unsampleable_ids(types, allow_eos=allow_eos),
        layers=layers, dim=dim, ff=ff, heads=heads, kv_heads=kv_heads,
    )
    with _quiet_writer():
        writer = GGUFWriter(None, "llama")
        writer.add_name(f"llmstack-tiny-seed{seed}")
        writer.add_string(PARAMS_KEY, json.dumps(params, sort_keys=True))
        writer.add_context_length(context_length)
        writer.add_embedding_length(dim)
        writer.add_block_count(layers)
        writer.add_feed_forward_length(ff)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(dim // heads)
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
        return _write_atomically(writer, Path(path))


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


def ensure_tiny_model(cache_dir: str | os.PathLike[str], name: str, **params: object) -> Path:
    """Return ``<cache_dir>/<name>.gguf``, writing it unless a complete copy made with
    the same parameters is already there."""
    path = Path(cache_dir) / f"{name}.gguf"
    bound = inspect.signature(write_tiny_gguf).bind(path, **params)
    bound.apply_defaults()
    wanted = dict(bound.arguments)
    del wanted["path"]
    if wanted["kv_heads"] is None:
        wanted["kv_heads"] = wanted["heads"]
    if path.is_file() and _recorded_params(path) == wanted:
        return path
    return write_tiny_gguf(path, **params)  # type: ignore[arg-type]
