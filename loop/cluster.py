"""Cluster pool embeddings into K groups with KMeans (the paper's strata)."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans


def cluster(vectors: np.ndarray, *, k: int, seed: int = 0) -> np.ndarray:
    """KMeans labels (0..k-1) for each row; k is capped by the number of rows."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = max(1, min(k, n))
    model = KMeans(n_clusters=k, random_state=seed, n_init=4)
    return model.fit_predict(np.asarray(vectors, dtype=np.float32)).astype(np.int64)
