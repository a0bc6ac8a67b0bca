"""Embedding (bundled all-MiniLM-L6-v2, offline), KMeans clustering and the profanity scorer R."""

from __future__ import annotations

import numpy as np
import pytest

from loop.cluster import cluster
from loop.embed import embed
from loop.scorer import get_scorer


def test_bundled_embedder_loads_offline_and_normalises():
    vectors = embed(["you are an idiot", "you are a fool", "the weather is nice today"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, different = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > different


def test_cluster_separates_obvious_groups_and_caps_k():
    points = np.array([[0, 0], [0, 0.1], [10, 10], [10, 10.1]], dtype=np.float32)
    labels = cluster(points, k=2, seed=0)
    assert labels[0] == labels[1] != labels[2] == labels[3]
    assert len(set(cluster(points, k=10, seed=0))) == 4


def test_profanity_scorer_ranks_offensive_above_neutral():
    score = get_scorer("profanity")
    offensive, neutral = score(["you are a fucking idiot", "thank you for the help"])
    assert 0 <= neutral < offensive <= 1
    assert score([]) == []


def test_unknown_scorer_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: profanity"):
        get_scorer("nope")
