"""Select the next batch: the paper's top-N/K per cluster, plus the baselines beside it.

Every strategy has one signature, `select(scores, clusters, budget, rng) -> list[int]`, over arrays
of the candidates (one entry per candidate), and returns positions into those arrays (map them
through your array of pool ids). Ties break by position, so a strategy is deterministic given rng.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Strategy = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], list[int]]


def allocate(sizes: dict[int, int], budget: int) -> dict[int, int]:
    """Split `budget` over clusters as evenly as capacity allows (N/K each).

    A cluster smaller than its share gives the remainder to the others; when the budget does not
    divide evenly the larger clusters get one more (then the lower cluster id).
    """
    alloc = {c: 0 for c in sizes}
    remaining = min(budget, sum(sizes.values()))
    active = [c for c in sizes if sizes[c] > 0]
    while remaining > 0 and active:
        share = remaining // len(active)
        if share == 0:
            for c in sorted(active, key=lambda c: (-(sizes[c] - alloc[c]), c))[:remaining]:
                alloc[c] += 1
            break
        for c in active:
            give = min(share, sizes[c] - alloc[c])
            alloc[c] += give
            remaining -= give
        active = [c for c in active if alloc[c] < sizes[c]]
    return alloc


def _by_cluster(clusters: np.ndarray) -> dict[int, np.ndarray]:
    return {int(c): np.flatnonzero(clusters == c) for c in np.unique(clusters)}


def _top(positions: np.ndarray, scores: np.ndarray, n: int) -> list[int]:
    order = np.lexsort((positions, -scores[positions]))  # score desc, then position asc
    return [int(p) for p in positions[order][:n]]


def stratified(scores: np.ndarray, clusters: np.ndarray, budget: int, rng: np.random.Generator) -> list[int]:
    """The paper's strategy: the N/K most informative candidates of every cluster."""
    groups = _by_cluster(np.asarray(clusters))
    alloc = allocate({c: len(p) for c, p in groups.items()}, budget)
    scores = np.asarray(scores, dtype=float)
    return [p for c, positions in groups.items() for p in _top(positions, scores, alloc[c])]


def global_top(scores: np.ndarray, clusters: np.ndarray, budget: int, rng: np.random.Generator) -> list[int]:
    """Baseline: the N most informative candidates, ignoring clusters."""
    scores = np.asarray(scores, dtype=float)
    return _top(np.arange(len(scores)), scores, budget)


def random(scores: np.ndarray, clusters: np.ndarray, budget: int, rng: np.random.Generator) -> list[int]:
    """Baseline: N candidates uniformly at random."""
    n = len(scores)
    return sorted(int(p) for p in rng.choice(n, size=min(budget, n), replace=False))


def cluster_random(scores: np.ndarray, clusters: np.ndarray, budget: int, rng: np.random.Generator) -> list[int]:
    """Baseline: N/K candidates of every cluster, at random within the cluster."""
    groups = _by_cluster(np.asarray(clusters))
    alloc = allocate({c: len(p) for c, p in groups.items()}, budget)
    picked: list[int] = []
    for c, positions in groups.items():
        picked.extend(int(p) for p in rng.choice(positions, size=alloc[c], replace=False))
    return sorted(picked)


def sample_per_cluster(clusters: np.ndarray, m: int, rng: np.random.Generator) -> list[int]:
    """Positions of at most `m` candidates of every cluster, uniformly at random within the cluster
    (a cluster of `m` or fewer keeps all); sorted, so the result depends only on the clusters and rng."""
    picked: list[int] = []
    for _, positions in sorted(_by_cluster(np.asarray(clusters)).items()):
        keep = positions if len(positions) <= m else rng.choice(positions, size=m, replace=False)
        picked.extend(int(p) for p in keep)
    return sorted(picked)


STRATEGIES: dict[str, Strategy] = {
    "stratified": stratified,
    "global_top": global_top,
    "random": random,
    "cluster_random": cluster_random,
}
