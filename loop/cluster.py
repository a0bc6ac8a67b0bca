"""Cluster pool embeddings into K groups with KMeans (the paper's strata), and keep the groups' ids stable.

A clustering is fitted once; items ingested later join the nearest stored centroid, so a cluster id
means the same region of the data in every round. Fitting again (new settings, or `labelloop
recluster`) is a new clustering version whose ids are matched to the previous version's centroids
where the regions correspond.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans


def fit(vectors: np.ndarray, *, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """KMeans (labels 0..k-1 per row, centroids k x dim); k is capped by the number of rows."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), np.float32)
    k = max(1, min(k, n))
    model = KMeans(n_clusters=k, random_state=seed, n_init=4)
    labels = model.fit_predict(vectors).astype(np.int64)
    return labels, model.cluster_centers_.astype(np.float32)


def cluster(vectors: np.ndarray, *, k: int, seed: int = 0) -> np.ndarray:
    """KMeans labels (0..k-1) for each row; k is capped by the number of rows."""
    return fit(vectors, k=k, seed=seed)[0]


def _distances(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every row to every centroid (what KMeans minimises)."""
    v, c = np.asarray(vectors, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    return (v**2).sum(1)[:, None] - 2 * v @ c.T + (c**2).sum(1)[None, :]


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid's index for each row: how an item ingested later joins the stored clustering
    (a NaN row is an id no region holds, and is never chosen)."""
    if len(vectors) == 0:
        return np.zeros(0, dtype=np.int64)
    unused = np.isnan(centroids).any(1)
    distances = _distances(vectors, np.nan_to_num(centroids))
    distances[:, unused] = np.inf
    return distances.argmin(1).astype(np.int64)


def centroids_of(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The mean vector of each label 0..max (a label with no rows gets NaN): centroids for a clustering
    stored before labelloop kept them."""
    vectors, labels = np.asarray(vectors, dtype=np.float32), np.asarray(labels)
    out = np.full((int(labels.max()) + 1, vectors.shape[1]), np.nan, dtype=np.float32)
    for c in np.unique(labels):
        out[c] = vectors[labels == c].mean(0)
    return out


def align(centroids: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """new id -> id to use: the new centroids matched one-to-one to the previous ones by least total
    distance (Hungarian), so a region keeps its id across clustering versions; new ids left over when
    K grew take the ids the previous version did not use."""
    from scipy.optimize import linear_sum_assignment

    cost = _distances(centroids, np.nan_to_num(previous))
    cost[:, np.isnan(previous).any(1)] = 1e30  # an id no region held: matched only when nothing else is left
    rows, cols = linear_sum_assignment(cost)
    mapping = np.full(len(centroids), -1, dtype=np.int64)
    mapping[rows] = cols
    spare = iter(sorted(set(range(len(centroids) + len(previous))) - set(cols.tolist())))
    for i in np.flatnonzero(mapping < 0):
        mapping[i] = next(spare)
    return mapping
