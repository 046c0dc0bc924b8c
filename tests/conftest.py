"""Shared pytest fixtures. Each helper adds its own below; keep each one compact."""
from __future__ import annotations

import pytest


# --- tiny checkpoint (owner: tokenizer/tiny) -------------------------------------------------
@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The embedded tiny checkpoint (Moonshot layout, seed 0), written once per test session.
    Treat it as read-only; copy it to a tmp dir before modifying anything."""
    from kimi_gguf.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "kimi-tiny", seed=0)


# --- tiny GGUF (owner: bridge) ---------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_dir):
    """The tiny checkpoint converted once per session to an f32 GGUF (read-only)."""
    from kimi_gguf.convert.api import convert_model

    out = tmp_path_factory.mktemp("tiny_gguf") / "kimi-tiny-f32.gguf"
    convert_model(tiny_dir, str(out), "f32")
    return out
