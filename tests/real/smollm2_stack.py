"""A real-model stack for client tests: SmolLM2-135M-Instruct (the ``smollm2_gguf`` fixture)
in a test Hugging Face cache, and a models.ini whose tiers serve it.

The file sits in the cache as a regular blob (a hard link or a copy, never a symlink out of
the cache: ``serve`` refuses those), under ``llmstack-test/smollm2-135m-instruct``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from llmstack.models.wheel_model import SMOLLM2

REPO = "llmstack-test/smollm2-135m-instruct"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DEFAULTS = """\
[DEFAULT]
threads = 1
n_gpu_layers = 0
flash_attn = auto
jinja = true
cache_type_k = f16
cache_type_v = f16
memory_budget_mb = 2048
"""


@pytest.fixture(scope="session")
def smollm2_hub(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """A Hugging Face cache (``HF_HUB_CACHE``) holding SmolLM2 as ``REPO``'s ``FILE``."""
    hub = tmp_path_factory.mktemp("hub")
    storage = hub / f"models--{REPO.replace('/', '--')}"
    blob = storage / "blobs" / SMOLLM2.sha256
    snapshot = storage / "snapshots" / COMMIT
    for directory in (blob.parent, snapshot, storage / "refs"):
        directory.mkdir(parents=True)
    try:
        os.link(smollm2_gguf, blob)
    except OSError:  # another file system
        shutil.copyfile(smollm2_gguf, blob)
    (storage / "refs" / "main").write_text(COMMIT)
    (snapshot / FILE).symlink_to(Path("..", "..", "blobs", blob.name))
    return hub


def models_ini(routing: str = "", **tiers: dict[str, object]) -> str:
    """A models.ini of tiers (name -> keys) that all serve SmolLM2; ``routing``: the
    ``[ROUTING]`` section's lines."""
    sections = [DEFAULTS + (f"\n[ROUTING]\n{routing}" if routing else "")]
    for name, keys in tiers.items():
        lines = [f"[{name}]", f"hf_repo = {REPO}", f"hf_file = {FILE}"]
        lines += [f"{key} = {value}" for key, value in keys.items()]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)
