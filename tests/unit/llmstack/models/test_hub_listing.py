"""Picking a hub repo's file for a quantisation (pure; the listing itself: tests/download/test_add.py)."""

from __future__ import annotations

import pytest

from llmstack.errors import UserError
from llmstack.models.hub_listing import HubFile, pick

FILES = [HubFile(p, 1) for p in ("m-Q4_K_M.gguf", "m-UD-Q4_K_M.gguf", "m-Q8_0.gguf",
                                  "Q5/m-Q5_K_M-00001-of-00002.gguf",
                                  "Q5/m-Q5_K_M-00002-of-00002.gguf", "README.md")]


def test_pick_names_the_choices_when_a_quant_is_ambiguous_absent_or_split() -> None:
    assert pick(FILES, "o/m", "Q8_0") == (FILES[2], "Q8_0")
    assert pick(FILES, "o/m", "m-UD-Q4_K_M.gguf") == (FILES[1], None)
    with pytest.raises(UserError, match=r"o/m has 2 Q4_K_M files: m-Q4_K_M.gguf, "
                                        r"m-UD-Q4_K_M.gguf; name one: o/m:m-Q4_K_M.gguf"):
        pick(FILES, "o/m", None)
    with pytest.raises(UserError, match=r"o/m has no Q6_K file; its GGUF files: m-Q4_K_M.gguf"):
        pick(FILES, "o/m", "Q6_K")
    with pytest.raises(UserError, match=r"split into 2 files, and a tier serves one"):
        pick(FILES, "o/m", "Q5_K_M")
    with pytest.raises(UserError, match=r"not a quantisation"):
        pick(FILES, "o/m", "Q4 ;x")
    assert pick([FILES[0]], "o/m", None) == (FILES[0], None)  # the only one
    assert pick(FILES, "o/m", "ud-q4_k_m") == (FILES[1], "ud-q4_k_m")
