"""Shared test setup: no network but loopback, assets in the project cache, tiny odd-sized models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("BENTOML_HOME", str(ROOT / ".cache" / "bentoml-test"))
os.environ.setdefault("BORT_CACHE", str(ROOT / ".cache" / "bort"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Odd sizes so that a transposed dimension fails instead of matching by accident.
TINY_ARCH = (2, 3, 33, 37)  # layers, heads, hidden (3 x 11), intermediate


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real embedded default source model folder (fetched once into the cache)."""
    from bort import assets

    return assets.model_dir("minilm")


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory, minilm_dir) -> Path:
    """A tiny random BERT (2/3/33/37) saved in Hugging Face layout with MiniLM's real tokenizer."""
    from bort import families as F

    folder = tmp_path_factory.mktemp("tiny_source")
    model = F.random_model(F.Arch(*TINY_ARCH), "bert", seed=0)
    model.config.max_position_embeddings = 512
    model.save_pretrained(folder, safe_serialization=True)
    F.load_tokenizer(minilm_dir).save_pretrained(folder)
    return folder
