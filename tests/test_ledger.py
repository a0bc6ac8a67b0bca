"""The ledger on a real SQLite file: idempotent creation, atomic writes, exactly-once verifications."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from loop.errors import LabelloopError, LedgerError
from loop.ledger import SCHEMA_VERSION, Ledger, NotFound, StaleState
from loop.ledger.schema import MIGRATIONS


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
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        _round(ledger, [2, 3])
    # the failed round left nothing behind
    assert len(ledger.rounds()) == 1 and ledger.unsent_pool_ids() == [3]


def test_round_state_moves_only_from_the_expected_state(ledger):
    ledger.add_pool(pool_rows("a"))
    rid = _round(ledger, [1])
    ledger.set_round_state(rid, "distilled", expect="selected")
    with pytest.raises(StaleState, match="expected state 'selected'"):
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


# --- lookups: get_* raises NotFound, find_* returns None ------------------------------------------------
def test_get_raises_not_found_and_find_returns_none(ledger):
    assert ledger.find_round(7) is None and ledger.find_current_round() is None
    with pytest.raises(NotFound, match="no round 7") as caught:
        ledger.get_round(7)
    assert isinstance(caught.value, LabelloopError) and caught.value.key == 7
    assert ledger.find_model_version("v3") is None
    with pytest.raises(NotFound, match="learner version 'v3'"):
        ledger.get_model_version("v3")
    with pytest.raises(NotFound):
        ledger.promote_model("v3")
    assert ledger.find_item_by_task(99) is None and ledger.find_item(1, 1) is None
    ledger.add_pool(pool_rows("a"))
    rid = _round(ledger, [1])
    assert ledger.get_round(rid)["state"] == "selected" == ledger.find_current_round()["state"]
    assert ledger.find_item(rid, 1)["text"] == "a"


# --- transactions ---------------------------------------------------------------------------------------
def test_a_nested_transaction_joins_the_outer_one(ledger):
    with pytest.raises(KeyError), ledger.transaction():
        ledger.add_pool(pool_rows("a"))  # its own transaction, nested: lands only with the outer one
        raise KeyError("the outer block fails after the inner one finished")
    assert ledger.pool_count() == 0
    with ledger.transaction():
        ledger.add_pool(pool_rows("a"))
        ledger.set_meta("k", "v")
    assert ledger.pool_count() == 1 and Ledger(ledger.path).find_meta("k") == "v"


def test_a_failed_commit_rolls_back_and_the_connection_stays_usable(ledger):
    # a deferred foreign key fails at COMMIT, not at the statement: the way a full disk fails a commit
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), ledger.transaction() as conn:
        conn.execute("PRAGMA defer_foreign_keys = ON")
        conn.execute("INSERT INTO clusters(pool_id, cluster, clustering) VALUES (999, 0, 'x')")
    assert not ledger.conn.in_transaction
    ledger.add_pool(pool_rows("after"))
    other = sqlite3.connect(ledger.path)  # another writer sees the later write, and is not locked out
    assert other.execute("SELECT count(*) FROM pool").fetchone()[0] == 1
    assert other.execute("SELECT count(*) FROM clusters").fetchone()[0] == 0
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")


# --- migrations: each from the schema before it ----------------------------------------------------------
def _ledger_at(path, version: int, *, record: int | None = None) -> None:
    """A ledger file written up to `version` (as a labelloop of that schema left it), recorded as `record`."""
    conn = sqlite3.connect(path, isolation_level=None)
    for number, _title, step in MIGRATIONS:
        if number <= version:
            conn.execute("BEGIN")
            step(conn)
            conn.execute("COMMIT")
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", [str(record or version)])
    conn.execute("INSERT INTO pool(text, norm, ingested_at) VALUES ('kept', 'kept', '2026-01-01T00:00:00')")
    conn.execute("INSERT INTO rounds(state, strategy, budget, learner_version, created_at, updated_at)"
                 " VALUES ('verifying', 'stratified', 1, 'v0', 'x', 'x')")
    conn.execute("INSERT INTO batch_items(round_id, pool_id, cluster, score, draft, task_id)"
                 " VALUES (1, 1, 0, 0.5, 'd', 9)")
    conn.execute("INSERT INTO verifications(annotation_id, task_id, round_id, pool_id, verdict, target, updated_at,"
                 " synced_at) VALUES (5, 9, 1, 1, 'accept', 'd', 'u', 's')")
    conn.execute("INSERT INTO model_versions(version, path, pairs, created_at) VALUES ('v0', 'base', 0, 'x')")
    conn.execute("INSERT INTO meta(key, value) VALUES ('learner_version', 'v0')")
    conn.close()


def _columns(ledger, table):
    return {row[1] for row in ledger.conn.execute(f"PRAGMA table_info({table})")}


@pytest.mark.parametrize("number", [m[0] for m in MIGRATIONS[1:]], ids=[m[1] for m in MIGRATIONS[1:]])
def test_each_migration_applies_to_the_schema_before_it_and_keeps_the_data(tmp_path, number):
    path = tmp_path / "old.sqlite"
    _ledger_at(path, number - 1)
    ledger = Ledger(path)
    assert ledger.schema_version() == SCHEMA_VERSION
    assert {"withdrawn_at", "lead_time", "created_at"} <= _columns(ledger, "verifications")
    assert {"status", "note", "pruned"} <= _columns(ledger, "model_versions")
    # what was stored survives, and the new columns work on it
    assert ledger.verified_pairs() == [("kept", "d")]
    assert ledger.find_current_model()["status"] == "promoted" and ledger.find_current_model()["pruned"] == 0
    assert ledger.withdraw_annotations(ledger.absent_verifications(set())) == 1 and ledger.verified_pairs() == []
    assert ledger.find_item_by_task(9)["draft"] == "d"


def test_a_ledger_that_predates_version_records_migrates_without_duplicate_columns(tmp_path):
    # labelloop before numbered migrations: every column added in place, but the version left at 1
    path = tmp_path / "legacy.sqlite"
    _ledger_at(path, SCHEMA_VERSION, record=1)
    ledger = Ledger(path)
    assert ledger.schema_version() == SCHEMA_VERSION and ledger.verified_pairs() == [("kept", "d")]


def test_a_ledger_from_a_newer_labelloop_is_refused_untouched(tmp_path):
    path = tmp_path / "new.sqlite"
    _ledger_at(path, SCHEMA_VERSION, record=SCHEMA_VERSION + 1)
    with pytest.raises(LedgerError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        Ledger(path)
    assert sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION + 1)


def test_processes_opening_a_new_ledger_at_the_same_moment_all_succeed(tmp_path):
    """The container starts two web workers and the scheduler on an empty volume: none may fail on
    "database is locked" (WAL switch) or "duplicate column name" (migrations run twice)."""
    import subprocess
    import sys

    opener = ("import sys, time, pathlib\n"
              "from loop.ledger import Ledger\n"
              "go = pathlib.Path(sys.argv[2])\n"
              "print('ready', flush=True)\n"
              "while not go.exists(): time.sleep(0.0005)\n"
              "print(Ledger(sys.argv[1]).schema_version())\n")
    for attempt in range(8):
        path, go = tmp_path / f"l{attempt}.sqlite", tmp_path / f"go{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", opener, str(path), str(go)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3  # imports done in all three
        go.touch()  # now all three open the file together
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err[-500:] for _, err in results]
        assert [out.strip() for out, _ in results] == [str(SCHEMA_VERSION)] * 3
