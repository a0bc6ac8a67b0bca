"""Selection strategies over arrays: the paper's top-N/K per cluster and the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from loop.select import STRATEGIES, allocate, cluster_random, global_top, random, stratified

SCORES = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.95, 0.3, 0.6])
CLUSTERS = np.array([0, 0, 0, 1, 1, 1, 2, 2])


def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize(
    "sizes, budget, expected",
    [
        ({0: 10, 1: 10, 2: 10}, 6, {0: 2, 1: 2, 2: 2}),
        ({0: 1, 1: 10, 2: 10}, 6, {0: 1, 1: 3, 2: 2}),   # the small cluster's leftover goes to the others
        ({0: 10, 1: 5, 2: 10}, 7, {0: 3, 1: 2, 2: 2}),   # remainder: larger cluster first, then lower id
        ({0: 2, 1: 1}, 10, {0: 2, 1: 1}),                 # budget beyond the pool: everything
        ({0: 0, 1: 4}, 2, {0: 0, 1: 2}),
    ],
)
def test_allocate_splits_the_budget_evenly_within_capacity(sizes, budget, expected):
    assert allocate(sizes, budget) == expected


def test_stratified_takes_the_top_of_every_cluster():
    picked = stratified(SCORES, CLUSTERS, 3, rng())
    assert sorted(picked) == [0, 5, 7]


def test_stratified_spends_a_small_clusters_share_elsewhere():
    # 7 over clusters of 3, 3 and 2: 2 + 2 + 2, then the one left over goes to cluster 0 (tie on
    # capacity, lower id), and cluster 1 gives its top two (0.95 and 0.7), never its 0.2
    picked = stratified(SCORES, CLUSTERS, 7, rng())
    assert sorted(picked) == [0, 1, 2, 3, 5, 6, 7]


def test_global_top_ignores_clusters():
    assert global_top(SCORES, CLUSTERS, 3, rng()) == [5, 0, 2]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_returns_distinct_positions_within_budget(name):
    picked = STRATEGIES[name](SCORES, CLUSTERS, 5, rng())
    assert len(picked) == len(set(picked)) == 5
    assert all(0 <= p < len(SCORES) for p in picked)
    assert STRATEGIES[name](SCORES, CLUSTERS, 100, rng()).__len__() == len(SCORES)


def test_random_strategies_are_reproducible_with_the_same_seed():
    assert random(SCORES, CLUSTERS, 4, rng()) == random(SCORES, CLUSTERS, 4, rng())
    picked = cluster_random(SCORES, CLUSTERS, 3, rng())
    assert sorted(CLUSTERS[picked].tolist()) == [0, 1, 2]


def test_ties_break_by_position():
    assert stratified(np.ones(4), np.zeros(4, dtype=int), 2, rng()) == [0, 1]
