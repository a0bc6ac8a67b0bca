"""The ledger: one SQLite file holding the loop's whole state; the only module that knows table names.

Pool items, embeddings, clusters, interim scores, rounds and their batch items, Label Studio task ids,
teacher outputs (a cache keyed by prompt hash), verifications, learner versions, metrics and webhook
events. Every write that must be all-or-nothing runs in one transaction. Connections are per thread
(Flask threads and the scheduler share a file, not a connection); WAL mode lets readers run beside
the writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

SCHEMA_VERSION = 1

ROUND_STATES = ("selected", "distilled", "imported", "verifying", "training", "done")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS pool (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    reference TEXT,
    subgroup TEXT,
    norm TEXT NOT NULL UNIQUE,
    source TEXT,
    line INTEGER,
    ingested_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    pool_id INTEGER PRIMARY KEY REFERENCES pool(id),
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters (
    pool_id INTEGER PRIMARY KEY REFERENCES pool(id),
    cluster INTEGER NOT NULL,
    clustering TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    pool_id INTEGER NOT NULL REFERENCES pool(id),
    learner_version TEXT NOT NULL,
    scorer TEXT NOT NULL,
    interim TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (pool_id, learner_version, scorer)
);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    strategy TEXT NOT NULL,
    budget INTEGER NOT NULL,
    learner_version TEXT NOT NULL,
    project_id INTEGER,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_items (
    round_id INTEGER NOT NULL REFERENCES rounds(id),
    pool_id INTEGER NOT NULL REFERENCES pool(id),
    cluster INTEGER NOT NULL,
    score REAL NOT NULL,
    interim TEXT,
    prompt_key TEXT,
    draft TEXT,
    teacher_error TEXT,
    task_id INTEGER,
    PRIMARY KEY (round_id, pool_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS batch_items_pool ON batch_items(pool_id);
CREATE INDEX IF NOT EXISTS batch_items_task ON batch_items(task_id);
CREATE TABLE IF NOT EXISTS teacher_cache (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    template TEXT NOT NULL,
    output TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS teacher_calls (
    id INTEGER PRIMARY KEY,
    round_id INTEGER,
    pool_id INTEGER,
    key TEXT,
    model TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'retry', 'invalid', 'failed', 'cached')),
    reason TEXT,
    final INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    latency_ms INTEGER,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS teacher_calls_round ON teacher_calls(round_id);
CREATE TABLE IF NOT EXISTS batch_topups (
    round_id INTEGER NOT NULL,
    pool_id INTEGER NOT NULL,
    replaces INTEGER NOT NULL,
    PRIMARY KEY (round_id, pool_id)
);
CREATE TABLE IF NOT EXISTS verifications (
    annotation_id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL,
    round_id INTEGER NOT NULL,
    pool_id INTEGER NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('accept', 'edit', 'reject')),
    target TEXT,
    draft TEXT,
    comment TEXT,
    annotator TEXT,
    updated_at TEXT,
    synced_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS verification_history (
    id INTEGER PRIMARY KEY,
    annotation_id INTEGER NOT NULL,
    change TEXT NOT NULL,
    verdict TEXT,
    target TEXT,
    updated_at TEXT,
    recorded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions (
    version TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    parent TEXT,
    round_id INTEGER,
    pairs INTEGER NOT NULL,
    metrics TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    action TEXT,
    project_id INTEGER,
    task_id INTEGER,
    annotation_id INTEGER,
    processed INTEGER NOT NULL DEFAULT 0
);
"""


def now() -> str:
    """UTC timestamp in ISO 8601, second precision: what every *_at column holds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Ledger:
    """The loop's state in one SQLite file; create with `Ledger(path)` (idempotent)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # executescript commits on its own; every statement in it is idempotent
        self.db.conn.executescript(_SCHEMA)
        self._add_column("verifications", "withdrawn_at", "TEXT")
        self._add_column("verifications", "lead_time", "REAL")  # seconds in the editor (issue 6)
        self._add_column("verifications", "created_at", "TEXT")
        self._add_column("model_versions", "status", "TEXT NOT NULL DEFAULT 'promoted'")  # issue 4: the gate
        self._add_column("model_versions", "note", "TEXT")
        self._add_column("model_versions", "pruned", "INTEGER NOT NULL DEFAULT 0")
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
            )

    # --- connections -------------------------------------------------------------------------
    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: all of it lands or none of it does."""
        conn = self.db.conn
        if conn.in_transaction:  # nested: join the outer one
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _add_column(self, table: str, column: str, decl: str) -> None:
        """Migration-safe ALTER TABLE ADD COLUMN (a no-op when the column exists)."""
        have = {row[1] for row in self.db.conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            self.db.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.conn.close()
            self._local.db = None

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        cur = self.db.conn.execute(sql, list(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def _value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = self.db.conn.execute(sql, list(params)).fetchone()
        return row[0] if row else None

    # --- meta ----------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        value = self._value("SELECT value FROM meta WHERE key = ?", [key])
        return default if value is None else value

    def set_meta(self, key: str, value: str | None) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [key, value])

    # --- pool ----------------------------------------------------------------------------------
    def add_pool(self, rows: list[dict]) -> tuple[int, int]:
        """Insert pool rows (text, reference, subgroup, norm, source, line) in one transaction.

        Returns (added, duplicates): rows whose normalised text is already stored are skipped.
        """
        stamp = now()
        added = 0
        with self.transaction() as conn:
            for row in rows:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO pool(text, reference, subgroup, norm, source, line, ingested_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [row["text"], row.get("reference"), row.get("subgroup"), row["norm"],
                     row.get("source"), row.get("line"), stamp],
                )
                added += cur.rowcount
        return added, len(rows) - added

    def pool_count(self) -> int:
        return self._value("SELECT count(*) FROM pool")

    def pool_items(self, ids: Iterable[int] | None = None) -> list[dict]:
        """Pool rows by id (in the given order), or all rows by id."""
        if ids is None:
            return self._rows("SELECT id, text, reference, subgroup FROM pool ORDER BY id")
        ids = list(ids)
        by_id = {
            r["id"]: r
            for chunk in _chunks(ids, 900)
            for r in self._rows(
                f"SELECT id, text, reference, subgroup FROM pool WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
        }
        return [by_id[i] for i in ids if i in by_id]

    def unsent_pool_ids(self) -> list[int]:
        """Pool ids never placed in any round's batch: the candidates for selection."""
        return [
            r[0]
            for r in self.db.conn.execute(
                "SELECT id FROM pool WHERE id NOT IN (SELECT pool_id FROM batch_items) ORDER BY id"
            )
        ]

    # --- embeddings and clusters ---------------------------------------------------------------
    def ids_without_embedding(self, model: str) -> list[int]:
        return [
            r[0]
            for r in self.db.conn.execute(
                "SELECT id FROM pool WHERE id NOT IN (SELECT pool_id FROM embeddings WHERE model = ?)"
                " ORDER BY id",
                [model],
            )
        ]

    def put_embeddings(self, model: str, ids: list[int], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings(pool_id, model, dim, vector) VALUES (?, ?, ?, ?)",
                [(i, model, vectors.shape[1], v.tobytes()) for i, v in zip(ids, vectors, strict=True)],
            )

    def embeddings(self, model: str) -> tuple[list[int], np.ndarray]:
        """All stored embeddings of one model as (pool ids, matrix)."""
        rows = self.db.conn.execute(
            "SELECT pool_id, dim, vector FROM embeddings WHERE model = ? ORDER BY pool_id", [model]
        ).fetchall()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        matrix = np.stack([np.frombuffer(r[2], dtype=np.float32) for r in rows])
        return [r[0] for r in rows], matrix

    def put_clusters(self, clustering: str, ids: list[int], labels: Iterable[int]) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM clusters")
            conn.executemany(
                "INSERT INTO clusters(pool_id, cluster, clustering) VALUES (?, ?, ?)",
                [(i, int(c), clustering) for i, c in zip(ids, labels, strict=True)],
            )

    def clusters(self) -> dict[int, int]:
        return dict(self.db.conn.execute("SELECT pool_id, cluster FROM clusters").fetchall())

    def clustering_id(self) -> str | None:
        return self._value("SELECT clustering FROM clusters LIMIT 1")

    # --- interim outputs and scores ------------------------------------------------------------
    def ids_without_score(self, learner_version: str, scorer: str, ids: list[int]) -> list[int]:
        have = {
            r[0]
            for r in self.db.conn.execute(
                "SELECT pool_id FROM scores WHERE learner_version = ? AND scorer = ?", [learner_version, scorer]
            )
        }
        return [i for i in ids if i not in have]

    def put_scores(
        self, learner_version: str, scorer: str, ids: list[int], interims: list[str], scores: list[float]
    ) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO scores(pool_id, learner_version, scorer, interim, score)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (i, learner_version, scorer, y, float(s))
                    for i, y, s in zip(ids, interims, scores, strict=True)
                ],
            )

    def scores(self, learner_version: str, scorer: str) -> dict[int, tuple[str, float]]:
        return {
            r[0]: (r[1], r[2])
            for r in self.db.conn.execute(
                "SELECT pool_id, interim, score FROM scores WHERE learner_version = ? AND scorer = ?",
                [learner_version, scorer],
            )
        }

    # --- rounds --------------------------------------------------------------------------------
    def create_round(
        self, *, strategy: str, budget: int, learner_version: str, items: list[dict]
    ) -> int:
        """A new round in state `selected` with its batch (pool_id, cluster, score, interim), atomically."""
        stamp = now()
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO rounds(state, strategy, budget, learner_version, created_at, updated_at)"
                " VALUES ('selected', ?, ?, ?, ?, ?)",
                [strategy, budget, learner_version, stamp, stamp],
            )
            round_id = cur.lastrowid
            conn.executemany(
                "INSERT INTO batch_items(round_id, pool_id, cluster, score, interim) VALUES (?, ?, ?, ?, ?)",
                [(round_id, it["pool_id"], it["cluster"], it["score"], it.get("interim")) for it in items],
            )
        return round_id

    def current_round(self) -> dict | None:
        """The newest round, whatever its state."""
        rows = self._rows("SELECT * FROM rounds ORDER BY id DESC LIMIT 1")
        return rows[0] if rows else None

    def get_round(self, round_id: int) -> dict | None:
        rows = self._rows("SELECT * FROM rounds WHERE id = ?", [round_id])
        return rows[0] if rows else None

    def rounds(self) -> list[dict]:
        return self._rows("SELECT * FROM rounds ORDER BY id")

    def set_round_state(self, round_id: int, state: str, *, expect: str | None = None, **fields: Any) -> None:
        """Move a round to `state`; with `expect`, only from that state (a stale step raises)."""
        if state not in ROUND_STATES:
            raise ValueError(f"unknown round state {state!r}; expected one of {ROUND_STATES}")
        sets = ", ".join(f"{k} = ?" for k in ["state", "updated_at", *fields])
        params = [state, now(), *fields.values(), round_id]
        sql = f"UPDATE rounds SET {sets} WHERE id = ?"
        if expect is not None:
            sql += " AND state = ?"
            params.append(expect)
        with self.transaction() as conn:
            if conn.execute(sql, params).rowcount != 1:
                raise RuntimeError(f"round {round_id}: cannot move to {state!r} (expected state {expect!r})")

    def set_round_error(self, round_id: int, error: str | None) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE rounds SET error = ?, updated_at = ? WHERE id = ?", [error, now(), round_id])

    def batch(self, round_id: int) -> list[dict]:
        """The round's batch items joined with their pool text, in selection order."""
        return self._rows(
            "SELECT b.*, p.text, p.reference, p.subgroup FROM batch_items b JOIN pool p ON p.id = b.pool_id"
            " WHERE b.round_id = ? ORDER BY b.cluster, b.score DESC, b.pool_id",
            [round_id],
        )

    def set_drafts(self, round_id: int, drafts: dict[int, tuple[str | None, str | None, str | None]]) -> None:
        """pool_id -> (prompt_key, draft, error) for a round's batch items."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE batch_items SET prompt_key = ?, draft = ?, teacher_error = ?"
                " WHERE round_id = ? AND pool_id = ?",
                [(k, d, e, round_id, pid) for pid, (k, d, e) in drafts.items()],
            )

    def set_task_ids(self, round_id: int, task_ids: dict[int, int]) -> None:
        """pool_id -> Label Studio task id for a round's batch items."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE batch_items SET task_id = ? WHERE round_id = ? AND pool_id = ?",
                [(t, round_id, pid) for pid, t in task_ids.items()],
            )

    def item_by_task(self, task_id: int) -> dict | None:
        rows = self._rows(
            "SELECT b.*, p.text, p.reference FROM batch_items b JOIN pool p ON p.id = b.pool_id"
            " WHERE b.task_id = ?",
            [task_id],
        )
        return rows[0] if rows else None

    def item_by_key(self, round_id: int, pool_id: int) -> dict | None:
        rows = self._rows(
            "SELECT b.*, p.text, p.reference FROM batch_items b JOIN pool p ON p.id = b.pool_id"
            " WHERE b.round_id = ? AND b.pool_id = ?",
            [round_id, pool_id],
        )
        return rows[0] if rows else None

    # --- teacher cache -------------------------------------------------------------------------
    def cached_outputs(self, keys: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(keys, 900):
            out.update(
                self.db.conn.execute(
                    f"SELECT key, output FROM teacher_cache WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
            )
        return out

    def cache_output(
        self, key: str, *, model: str, template: str, output: str,
        prompt_tokens: int | None = None, completion_tokens: int | None = None,
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO teacher_cache(key, model, template, output, prompt_tokens,"
                " completion_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [key, model, template, output, prompt_tokens, completion_tokens, now()],
            )

    # --- teacher accounting and batch top-ups ------------------------------------------------------
    _CALL_FIELDS = ("round_id", "pool_id", "key", "model", "attempt", "status", "reason", "final",
                    "prompt_tokens", "completion_tokens", "cost", "latency_ms")

    def record_teacher_calls(self, rows: list[dict]) -> None:
        """Append teacher attempts (one row per HTTP request, or one `cached` row per cache hit)."""
        if not rows:
            return
        stamp = now()
        with self.transaction() as conn:
            conn.executemany(
                f"INSERT INTO teacher_calls({', '.join(self._CALL_FIELDS)}, created_at)"
                f" VALUES ({', '.join('?' * (len(self._CALL_FIELDS) + 1))})",
                [[r.get(f, 0 if f in ("final", "prompt_tokens", "completion_tokens", "cost") else None)
                  for f in self._CALL_FIELDS] + [stamp] for r in rows],
            )

    def teacher_usage(self, round_id: int | None = None) -> dict:
        """What the teacher did and cost, for one round or in total.

        calls: items sent to the API; attempts: HTTP requests, retries included; failures: items that
        ended without a valid output; cached: items answered from the cache; tokens and cost (USD)
        summed over every attempt, since a retried or rejected answer is billed too.
        """
        where, params = ("WHERE round_id = ?", [round_id]) if round_id is not None else ("", [])
        row = self.db.conn.execute(
            "SELECT count(CASE WHEN final = 1 AND status != 'cached' THEN 1 END),"
            " count(CASE WHEN status != 'cached' THEN 1 END),"
            " count(CASE WHEN final = 1 AND status = 'failed' THEN 1 END),"
            " count(CASE WHEN status = 'cached' THEN 1 END),"
            " coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(cost), 0)"
            f" FROM teacher_calls {where}",
            params,
        ).fetchone()
        keys = ("calls", "attempts", "failures", "cached", "prompt_tokens", "completion_tokens", "cost")
        return dict(zip(keys, row, strict=True))

    def teacher_usage_by_item(self, round_id: int) -> dict[int, dict]:
        """pool_id -> attempts, prompt and completion tokens and cost of one round's items."""
        return {
            r["pool_id"]: r
            for r in self._rows(
                "SELECT pool_id, count(CASE WHEN status != 'cached' THEN 1 END) AS attempts,"
                " sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,"
                " sum(cost) AS cost FROM teacher_calls WHERE round_id = ? GROUP BY pool_id",
                [round_id],
            )
        }

    def teacher_failures(self, round_id: int | None = None) -> list[dict]:
        """The final failed attempt of every item that got no valid output: pool_id, reason, attempt."""
        where, params = ("AND round_id = ?", [round_id]) if round_id is not None else ("", [])
        return self._rows(
            "SELECT round_id, pool_id, attempt, reason FROM teacher_calls"
            f" WHERE final = 1 AND status = 'failed' {where} ORDER BY id",
            params,
        )

    def add_topup_items(self, round_id: int, items: list[dict]) -> None:
        """Add replacement items (pool_id, cluster, score, interim, replaces) to a round's batch, atomically."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO batch_items(round_id, pool_id, cluster, score, interim) VALUES (?, ?, ?, ?, ?)",
                [(round_id, it["pool_id"], it["cluster"], it["score"], it.get("interim")) for it in items],
            )
            conn.executemany(
                "INSERT INTO batch_topups(round_id, pool_id, replaces) VALUES (?, ?, ?)",
                [(round_id, it["pool_id"], it["replaces"]) for it in items],
            )

    def topups(self, round_id: int) -> dict[int, int]:
        """pool_id of each replacement item in a round -> the pool_id of the failed item it replaces."""
        return dict(
            self.db.conn.execute("SELECT pool_id, replaces FROM batch_topups WHERE round_id = ?", [round_id])
        )

    # --- verifications -------------------------------------------------------------------------
    def record_verifications(self, rows: list[dict]) -> int:
        """Upsert verifications by annotation id; returns how many changed.

        Latest wins: a row whose `updated_at` is older than the stored one (a late, out-of-order
        read) changes nothing. Every change is appended to `verification_history`; a withdrawn
        verification that shows up again is restored.
        """
        changed = 0
        stamp = now()
        with self.transaction() as conn:
            for r in rows:
                old = conn.execute(
                    "SELECT updated_at, verdict, target, withdrawn_at FROM verifications WHERE annotation_id = ?",
                    [r["annotation_id"]],
                ).fetchone()
                if old is not None:
                    same = (old[1], old[2]) == (r["verdict"], r["target"]) and old[3] is None
                    if same or (old[0] or "") > (r["updated_at"] or ""):
                        continue
                conn.execute(
                    "INSERT OR REPLACE INTO verifications(annotation_id, task_id, round_id, pool_id, verdict,"
                    " target, draft, comment, annotator, updated_at, synced_at, withdrawn_at, lead_time, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                    [r["annotation_id"], r["task_id"], r["round_id"], r["pool_id"], r["verdict"], r["target"],
                     r.get("draft"), r.get("comment"), r.get("annotator"), r["updated_at"], stamp,
                     r.get("lead_time"), r.get("created_at")],
                )
                conn.execute(
                    "INSERT INTO verification_history(annotation_id, change, verdict, target, updated_at,"
                    " recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [r["annotation_id"], "created" if old is None else "updated", r["verdict"], r["target"],
                     r["updated_at"], stamp],
                )
                changed += 1
        return changed

    def withdraw_verifications(self, present: set[int], task_ids: Iterable[int] | None = None) -> int:
        """Withdraw verifications whose annotation is gone from Label Studio (deleted there).

        `present` holds the annotation ids Label Studio still has, for all tasks or, with
        `task_ids`, for those tasks only. Returns how many were withdrawn.
        """
        sql = "SELECT annotation_id FROM verifications WHERE withdrawn_at IS NULL"
        params: list[Any] = []
        if task_ids is not None:
            task_ids = list(task_ids)
            if not task_ids:
                return 0
            sql += f" AND task_id IN ({','.join('?' * len(task_ids))})"
            params = task_ids
        gone = [row[0] for row in self.db.conn.execute(sql, params) if row[0] not in present]
        stamp = now()
        with self.transaction() as conn:
            for annotation_id in gone:
                conn.execute(
                    "UPDATE verifications SET withdrawn_at = ? WHERE annotation_id = ?", [stamp, annotation_id]
                )
                conn.execute(
                    "INSERT INTO verification_history(annotation_id, change, recorded_at) VALUES (?, 'withdrawn', ?)",
                    [annotation_id, stamp],
                )
        return len(gone)

    def verification_history(self, annotation_id: int) -> list[dict]:
        return self._rows(
            "SELECT change, verdict, target, updated_at FROM verification_history WHERE annotation_id = ? ORDER BY id",
            [annotation_id],
        )

    def verifications(self, round_id: int | None = None) -> list[dict]:
        """Verifications in force (withdrawn ones left out), optionally of one round."""
        sql = "SELECT * FROM verifications WHERE withdrawn_at IS NULL"
        params: list[Any] = []
        if round_id is not None:
            sql += " AND round_id = ?"
            params.append(round_id)
        return self._rows(sql + " ORDER BY annotation_id", params)

    def verified_pairs(self) -> list[tuple[str, str]]:
        """(source, target) for every accepted or edited item; one pair per pool item (latest annotation)."""
        rows = self.db.conn.execute(
            "SELECT p.text, v.target FROM verifications v JOIN pool p ON p.id = v.pool_id"
            " WHERE v.verdict IN ('accept', 'edit') AND v.annotation_id = ("
            "   SELECT max(annotation_id) FROM verifications v2 WHERE v2.pool_id = v.pool_id"
            "   AND v2.withdrawn_at IS NULL)"
            " ORDER BY v.pool_id"
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def round_progress(self, round_id: int) -> dict:
        """Counts for one round: selected, distilled, failed, imported, verified, and verdicts."""
        row = self.db.conn.execute(
            "SELECT count(*), count(draft), count(teacher_error), count(task_id),"
            " count(DISTINCT CASE WHEN EXISTS (SELECT 1 FROM verifications v WHERE v.round_id = b.round_id"
            "   AND v.pool_id = b.pool_id AND v.withdrawn_at IS NULL) THEN b.pool_id END)"
            " FROM batch_items b WHERE round_id = ?",
            [round_id],
        ).fetchone()
        verdicts = dict(
            self.db.conn.execute(
                "SELECT verdict, count(DISTINCT pool_id) FROM verifications WHERE round_id = ? AND withdrawn_at IS NULL"
                " GROUP BY verdict",
                [round_id],
            ).fetchall()
        )
        return {
            "selected": row[0], "distilled": row[1], "failed": row[2], "imported": row[3], "verified": row[4],
            "accept": verdicts.get("accept", 0), "edit": verdicts.get("edit", 0),
            "reject": verdicts.get("reject", 0),
        }

    # --- learner versions ----------------------------------------------------------------------
    def add_model_version(
        self, version: str, *, path: str, parent: str | None, round_id: int | None, pairs: int, metrics: dict,
        promote: bool = True, note: str | None = None,
    ) -> None:
        """Register a checkpoint; `promote` makes it the version in use, else it is kept as 'held'."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO model_versions(version, path, parent, round_id, pairs, metrics, created_at,"
                " status, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [version, path, parent, round_id, pairs, json.dumps(metrics, sort_keys=True), now(),
                 "promoted" if promote else "held", note],
            )
            if promote:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('learner_version', ?)", [version])

    def model_versions(self) -> list[dict]:
        rows = self._rows(  # v10 after v2: by number, not by text
            "SELECT * FROM model_versions ORDER BY created_at, CAST(substr(version, 2) AS INTEGER), version"
        )
        for r in rows:
            r["metrics"] = json.loads(r["metrics"] or "{}")
        return rows

    def current_model(self) -> dict | None:
        version = self.get_meta("learner_version")
        if version is None:
            return None
        rows = self._rows("SELECT * FROM model_versions WHERE version = ?", [version])
        return rows[0] if rows else None

    # --- learner versions: gate, rollback, pruning, reuse of interim outputs (issue 4) ------------
    def model_version(self, version: str) -> dict | None:
        """One registered version (metrics decoded), or None."""
        rows = self._rows("SELECT * FROM model_versions WHERE version = ?", [version])
        for r in rows:
            r["metrics"] = json.loads(r["metrics"] or "{}")
        return rows[0] if rows else None

    def promote_model(self, version: str, note: str | None = None) -> None:
        """Make `version` the one in use (rollback or a manual promotion); KeyError if unknown."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM model_versions WHERE version = ?", [version]).fetchone() is None:
                raise KeyError(version)
            conn.execute("UPDATE model_versions SET status = 'promoted', note = coalesce(?, note) WHERE version = ?",
                         [note, version])
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('learner_version', ?)", [version])

    def mark_model_pruned(self, version: str) -> None:
        """Record that a version's checkpoint was deleted from disk (it stays in the history)."""
        with self.transaction() as conn:
            conn.execute("UPDATE model_versions SET pruned = 1 WHERE version = ?", [version])

    def interims(self, learner_version: str, ids: list[int]) -> dict[int, str]:
        """Stored interim outputs G(x) of one version under any scorer (generation need not be redone)."""
        wanted = set(ids)
        return {
            r[0]: r[1]
            for r in self.db.conn.execute(
                "SELECT pool_id, interim FROM scores WHERE learner_version = ?", [learner_version]
            )
            if r[0] in wanted
        }

    # --- webhook events ------------------------------------------------------------------------
    def record_event(self, action: str | None, project_id: int | None, task_id: int | None,
                     annotation_id: int | None) -> int:
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO events(received_at, action, project_id, task_id, annotation_id) VALUES (?, ?, ?, ?, ?)",
                [now(), action, project_id, task_id, annotation_id],
            )
            return cur.lastrowid

    def pending_events(self) -> int:
        return self._value("SELECT count(*) FROM events WHERE processed = 0")

    def pending_event_tasks(self) -> tuple[int, list[int]]:
        """(highest pending event id, distinct task ids those events name) for a targeted sync."""
        rows = self.db.conn.execute("SELECT id, task_id FROM events WHERE processed = 0 ORDER BY id").fetchall()
        if not rows:
            return 0, []
        return rows[-1][0], sorted({r[1] for r in rows if r[1] is not None})

    def mark_events_processed(self, up_to: int | None = None) -> None:
        """Mark events handled (all of them, or those with id <= up_to: later ones stay pending)."""
        with self.transaction() as conn:
            if up_to is None:
                conn.execute("UPDATE events SET processed = 1 WHERE processed = 0")
            else:
                conn.execute("UPDATE events SET processed = 1 WHERE processed = 0 AND id <= ?", [up_to])

    # --- status and export (issue 6) ----------------------------------------------------------
    # "latest" = the newest annotation in force of each pool item: the verdict an item counts under.
    _LATEST = (
        "SELECT v.* FROM verifications v WHERE v.withdrawn_at IS NULL AND v.annotation_id = ("
        " SELECT max(v2.annotation_id) FROM verifications v2 WHERE v2.pool_id = v.pool_id"
        " AND v2.withdrawn_at IS NULL)"
    )

    def cluster_progress(self) -> list[dict]:
        """Per round and cluster: selected, failed, imported, verified items and their latest verdicts."""
        return self._rows(
            f"WITH latest AS ({self._LATEST})"
            " SELECT b.round_id, b.cluster, count(*) AS selected, count(b.teacher_error) AS failed,"
            " count(b.task_id) AS imported, count(l.verdict) AS verified,"
            " sum(l.verdict = 'accept') AS accept, sum(l.verdict = 'edit') AS edit,"
            " sum(l.verdict = 'reject') AS reject"
            " FROM batch_items b LEFT JOIN latest l ON l.pool_id = b.pool_id AND l.round_id = b.round_id"
            " GROUP BY b.round_id, b.cluster ORDER BY b.round_id, b.cluster"
        )

    def coverage(self) -> list[dict]:
        """Per cluster and subgroup of the pool: items, items ever selected, items labeled (accept/edit)."""
        return self._rows(
            f"WITH latest AS ({self._LATEST})"
            " SELECT c.cluster, p.subgroup, count(*) AS pool, count(b.pool_id) AS selected,"
            " count(CASE WHEN l.verdict IN ('accept', 'edit') THEN 1 END) AS labeled"
            " FROM pool p LEFT JOIN clusters c ON c.pool_id = p.id"
            " LEFT JOIN batch_items b ON b.pool_id = p.id LEFT JOIN latest l ON l.pool_id = p.id"
            " GROUP BY c.cluster, p.subgroup ORDER BY c.cluster, p.subgroup"
        )

    def annotation_times(self) -> list[dict]:
        """Every annotation in force: round, annotator, lead time and timestamps (for throughput)."""
        return self._rows(
            "SELECT annotation_id, round_id, pool_id, annotator, lead_time, created_at, updated_at"
            " FROM verifications WHERE withdrawn_at IS NULL ORDER BY annotation_id"
        )

    def export_rows(self, round_ids: Iterable[int] | None = None, verdicts: Iterable[str] | None = None) -> list[dict]:
        """The latest verification of each pool item joined with its source, batch item and round."""
        sql = (
            f"WITH latest AS ({self._LATEST})"
            " SELECT l.pool_id, l.annotation_id, l.task_id, l.round_id, l.verdict, l.target, l.draft AS shown_draft,"
            " l.annotator, l.lead_time, l.created_at, l.updated_at, p.text AS source, p.subgroup,"
            " b.cluster, b.score, b.draft, r.learner_version,"
            " (SELECT value FROM meta WHERE key = 'round:' || l.round_id || ':model_version') AS teacher"
            " FROM latest l JOIN pool p ON p.id = l.pool_id JOIN rounds r ON r.id = l.round_id"
            " LEFT JOIN batch_items b ON b.round_id = l.round_id AND b.pool_id = l.pool_id"
        )
        where, params = [], []
        if round_ids is not None:
            ids = list(round_ids)
            where.append(f"l.round_id IN ({','.join('?' * len(ids)) or 'NULL'})")
            params += ids
        if verdicts is not None:
            vs = list(verdicts)
            where.append(f"l.verdict IN ({','.join('?' * len(vs)) or 'NULL'})")
            params += vs
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._rows(sql + " ORDER BY l.round_id, l.pool_id", params)

    def annotator_salt(self) -> str:
        """The random salt for anonymised annotator ids: created once, kept in meta, never exported."""
        import secrets

        salt = self.get_meta("annotator_salt")
        if salt is not None:  # the common case reads only: the dashboard must not take the write lock
            return salt
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('annotator_salt', ?)", [secrets.token_hex(16)]
            )
        return self.get_meta("annotator_salt")


def _chunks(seq: list, size: int) -> Iterator[list]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
