"""The cap on candidates scored per cluster (`select.candidates_per_cluster`): at most M per cluster are
generated and scored, the sample is stored before scoring so a resumed selection scores the same one,
and with the cap off every unsent item is scored (the paper's method)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from loop import rounds
from loop.config import load_settings
from loop.errors import ConfigError
from loop.ledger import Ledger
from loop.select import sample_per_cluster
from loop.service import ensure_pool


def _ctx(tmp_path, pool, model, **overrides) -> rounds.Context:
    settings = load_settings(data_dir=str(tmp_path / "labelloop"), pool__path=str(pool),
                             learner__base_model=str(model), cluster__k=3, select__budget=6, **overrides)
    ledger = Ledger(settings.ledger_path)
    ensure_pool(settings, ledger)
    return rounds.Context(settings, ledger)


def _scored(ctx: rounds.Context) -> set[int]:
    return set(ctx.ledger.scores(*rounds.score_key(ctx.settings, "v0")))


def test_sample_per_cluster_keeps_at_most_m_of_each_cluster_and_small_clusters_whole():
    clusters = np.array([0] * 10 + [1] * 2 + [2] * 5)
    picked = sample_per_cluster(clusters, 3, np.random.default_rng(7))
    assert Counter(int(clusters[p]) for p in picked) == {0: 3, 1: 2, 2: 3}
    assert picked == sample_per_cluster(clusters, 3, np.random.default_rng(7)) == sorted(picked)


def test_the_cap_scores_at_most_m_per_cluster_and_selects_from_the_sample(tmp_path, small_pool, starter_model):
    ctx = _ctx(tmp_path, small_pool, starter_model, select__candidates_per_cluster=4)
    round_id = rounds.select_round(ctx)
    sample = json.loads(ctx.ledger.find_meta(f"round:{round_id}:candidates"))
    clusters = ctx.ledger.clusters()
    assert (sample["m"], sample["of"]) == (4, 60)
    assert _scored(ctx) == set(sample["ids"])  # nothing outside the sample was generated or scored
    assert max(Counter(clusters[i] for i in sample["ids"]).values()) == 4 and len(sample["ids"]) <= 12
    batch = ctx.ledger.batch(round_id)
    assert len(batch) == 6 and {b["pool_id"] for b in batch} <= set(sample["ids"])


def test_a_selection_that_crashed_while_scoring_resumes_on_the_same_sample(tmp_path, small_pool, starter_model,
                                                                           monkeypatch):
    ctx = _ctx(tmp_path, small_pool, starter_model, select__candidates_per_cluster=4)
    real = rounds._score_candidates

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while scoring")

    monkeypatch.setattr(rounds, "_score_candidates", crash)
    with pytest.raises(KeyboardInterrupt):
        rounds.select_round(ctx)
    assert ctx.ledger.rounds() == [] and _scored(ctx) == set()
    stored = json.loads(ctx.ledger.find_meta("round:1:candidates"))["ids"]

    def no_resampling(*args, **kwargs):
        raise AssertionError("a resumed selection drew a new sample")

    monkeypatch.setattr(rounds, "_score_candidates", real)
    monkeypatch.setattr(rounds, "sample_per_cluster", no_resampling)
    round_id = rounds.select_round(ctx)
    assert round_id == 1 and _scored(ctx) == set(stored)
    assert {b["pool_id"] for b in ctx.ledger.batch(round_id)} <= set(stored)


def test_without_the_cap_every_unsent_item_is_scored(tmp_path, small_pool, starter_model):
    ctx = _ctx(tmp_path, small_pool, starter_model)
    round_id = rounds.select_round(ctx)
    assert len(_scored(ctx)) == 60 and ctx.ledger.find_meta(f"round:{round_id}:candidates") is None


def test_a_cap_too_small_for_the_budget_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="candidates_per_cluster"):
        load_settings(data_dir=str(tmp_path), cluster__k=4, select__budget=40, select__candidates_per_cluster=9)


def test_simulate_checks_its_cap_like_the_other_counts():
    from loop.simulate import SimConfig, SimulateError

    with pytest.raises(SimulateError, match="--candidates-per-cluster must be >= 1"):
        SimConfig(data="x.tsv", candidates_per_cluster=0).check()
