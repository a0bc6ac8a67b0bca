"""The ledger on a real SQLite file: idempotent creation, atomic writes, exactly-once verifications."""

from __future__ import annotations

import numpy as np
import pytest

from loop.ledger import SCHEMA_VERSION, Ledger, NotFound, StaleState


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "ledger.sqlite")


def pool_rows(*texts):
    return [{"text": t, "norm": t.lower(), "reference": None, "source": "f.tsv", "line": i + 2}
            for i, t in enumerate(texts)]


def test_creation_is_idempotent_and_keeps_data(tmp_path):
    first = Ledger(tmp_path / "l.sqlite")
    first.add_pool(pool_rows("a", "b"))
    again = Ledger(tmp_path / "l.sqlite")
    assert again.pool_count() == 2
    assert again.find_meta("schema_version") == str(SCHEMA_VERSION) == str(again.schema_version())


def test_pool_skips_known_texts(ledger):
    assert ledger.add_pool(pool_rows("a", "b")) == (2, 0)
    assert ledger.add_pool(pool_rows("b", "c")) == (1, 1)
    assert [r["text"] for r in ledger.pool_items()] == ["a", "b", "c"]


def test_embeddings_round_trip(ledger):
    ledger.add_pool(pool_rows("a", "b"))
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    ledger.put_embeddings("m", [1, 2], vectors)
    ids, matrix = ledger.embeddings("m")
    assert ids == [1, 2] and np.array_equal(matrix, vectors)
    assert ledger.ids_without_embedding("m") == [] and ledger.ids_without_embedding("other") == [1, 2]


def _round(ledger, pool_ids):
    return ledger.create_round(
        strategy="stratified", budget=len(pool_ids), learner_version="v0",
        items=[{"pool_id": p, "cluster": 0, "score": 0.5} for p in pool_ids],
    )


def test_an_item_is_sent_in_one_round_only(ledger):
    ledger.add_pool(pool_rows("a", "b", "c"))
    _round(ledger, [1, 2])
    assert ledger.unsent_pool_ids() == [3]
    with pytest.raises(Exception, match="UNIQUE"):
        _round(ledger, [2, 3])
    # the failed round left nothing behind
    assert len(ledger.rounds()) == 1 and ledger.unsent_pool_ids() == [3]


def test_round_state_moves_only_from_the_expected_state(ledger):
    ledger.add_pool(pool_rows("a"))
    rid = _round(ledger, [1])
    ledger.set_round_state(rid, "distilled", expect="selected")
    with pytest.raises(RuntimeError, match="expected state 'selected'"):
        ledger.set_round_state(rid, "distilled", expect="selected")
    with pytest.raises(ValueError, match="unknown round state"):
        ledger.set_round_state(rid, "flying")


def verification(annotation_id, verdict="accept", target="t", updated_at="2026-01-01T00:00:00", pool_id=1):
    return {"annotation_id": annotation_id, "task_id": 10 + pool_id, "round_id": 1, "pool_id": pool_id,
            "verdict": verdict, "target": target, "draft": "t", "updated_at": updated_at}


def test_verifications_are_recorded_exactly_once_and_latest_wins(ledger):
    ledger.add_pool(pool_rows("a", "b"))
    _round(ledger, [1, 2])
    assert ledger.record_verifications([verification(5), verification(6, "reject", None, pool_id=2)]) == 2
    assert ledger.record_verifications([verification(5), verification(6, "reject", None, pool_id=2)]) == 0
    assert len(ledger.verifications()) == 2
    assert ledger.record_verifications([verification(5, "edit", "better", "2026-01-02T00:00:00")]) == 1
    assert ledger.verified_pairs() == [("a", "better")]  # the rejection is not a pair
    progress = ledger.round_progress(1)
    assert (progress["verified"], progress["edit"], progress["reject"], progress["accept"]) == (2, 1, 1, 0)


def test_current_model_follows_the_last_registered_version(ledger):
    assert ledger.find_current_model() is None
    ledger.add_model_version("v0", path="base", parent=None, round_id=None, pairs=0, metrics={})
    ledger.add_model_version("v1", path="p1", parent="v0", round_id=1, pairs=4, metrics={"train_loss": 1.5})
    assert ledger.find_current_model()["version"] == "v1"
    assert [v["metrics"] for v in ledger.model_versions()] == [{}, {"train_loss": 1.5}]
