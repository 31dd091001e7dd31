"""The standard-library GGUF header reader agrees with the gguf package and refuses bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader

from llmstack.models.gguf_header import read_gguf_metadata
from llmstack.models.tiny_gguf import PARAMS_KEY, write_tiny_gguf


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", layers=3, dim=32)


def test_every_key_reads_as_the_gguf_package_reads_it(model: Path) -> None:
    expected = {k: f.contents() for k, f in GGUFReader(model).fields.items()
                if not k.startswith("GGUF.")}
    found = read_gguf_metadata(model)
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert found[key] == pytest.approx(value) if isinstance(value, float) else found[key] == value


def test_only_the_keys_asked_for_are_returned(model: Path) -> None:
    found = read_gguf_metadata(model, {PARAMS_KEY, "llama.block_count"})
    assert found["llama.block_count"] == 3 and set(found) == {PARAMS_KEY, "llama.block_count"}


def test_a_file_that_is_not_gguf_or_is_cut_short_is_refused(model: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf_metadata(other)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(model.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated"):
        read_gguf_metadata(cut)
