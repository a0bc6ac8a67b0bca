"""The ledger's schema as numbered migrations: each brings the file from the version before it to its own.

A migration is a plain function over an open transaction; `Store.migrate` applies the ones a file
lacks, in order, and records the version reached in `meta`. Ledgers written before versions were
recorded hold `schema_version` 1 and may already have any later column, so every step checks
before it adds. Append new steps at the end; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils

from loop.vocab import TEACHER_CALL_STATUSES, VERDICTS


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


_BASE = f"""
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
    status TEXT NOT NULL CHECK (status IN ({_sql_list(TEACHER_CALL_STATUSES)})),
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
    verdict TEXT NOT NULL CHECK (verdict IN ({_sql_list(VERDICTS)})),
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
)
"""


def add_column(conn: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    """ALTER TABLE ADD COLUMN, a no-op when the column is already there."""
    if column not in sqlite_utils.Database(conn)[table].columns_dict:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def m001_base(conn: sqlite3.Connection) -> None:
    """Pool, embeddings, clusters, scores, rounds, batches, teacher cache and calls, verifications,
    learner versions and webhook events."""
    for statement in _BASE.split(";"):  # one by one: executescript would COMMIT the migration's transaction
        if statement.strip():
            conn.execute(statement)


def m002_withdrawals(conn: sqlite3.Connection) -> None:
    """A verification whose annotation was deleted in Label Studio is withdrawn, not deleted."""
    add_column(conn, "verifications", "withdrawn_at", "TEXT")


def m003_annotation_times(conn: sqlite3.Connection) -> None:
    """Seconds in the editor and the annotation's creation time, for throughput."""
    add_column(conn, "verifications", "lead_time", "REAL")
    add_column(conn, "verifications", "created_at", "TEXT")


def m004_version_gate(conn: sqlite3.Connection) -> None:
    """A trained version is promoted or held by the dev-loss gate, and its checkpoint may be pruned."""
    add_column(conn, "model_versions", "status", "TEXT NOT NULL DEFAULT 'promoted'")
    add_column(conn, "model_versions", "note", "TEXT")
    add_column(conn, "model_versions", "pruned", "INTEGER NOT NULL DEFAULT 0")


def m005_references_and_groups(conn: sqlite3.Connection) -> None:
    """Every reference and every group membership of an item, not only the first (pool keeps the first)."""
    for table, column in (("pool_references", "reference"), ("pool_groups", "subgroup")):
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (pool_id INTEGER NOT NULL REFERENCES pool(id),"
            f" position INTEGER NOT NULL, {column} TEXT NOT NULL, PRIMARY KEY (pool_id, {column}))"
        )
        conn.execute(
            f"INSERT OR IGNORE INTO {table}(pool_id, position, {column})"
            f" SELECT id, 0, {column} FROM pool WHERE {column} IS NOT NULL"
        )


def m006_clustering_versions(conn: sqlite3.Connection) -> None:
    """Clusterings are versioned and keep their centroids, so later items join them and ids stay put;
    a round records the clustering it was selected under. A stored clustering becomes version 1."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS clusterings (version INTEGER PRIMARY KEY, identity TEXT NOT NULL,"
        " centroids BLOB, k INTEGER, dim INTEGER, reason TEXT, created_at TEXT NOT NULL)"
    )
    add_column(conn, "rounds", "clustering", "INTEGER")
    stored = conn.execute("SELECT clustering FROM clusters LIMIT 1").fetchone()
    if stored and not conn.execute("SELECT 1 FROM clusterings").fetchone():
        conn.execute(
            "INSERT INTO clusterings(version, identity, reason, created_at)"
            " VALUES (1, ?, 'stored before clusterings were versioned', datetime('now'))",
            [stored[0]],
        )
        conn.execute("UPDATE rounds SET clustering = 1")
def m007_team(conn: sqlite3.Connection) -> None:
    """A real annotation team: skips (Label Studio's cancelled annotations) per task and annotator; a
    skipped item can return to the pool (so one pool item may sit in several rounds' batches); a round
    may close at a deadline, and records why it closed."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS skips (annotation_id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL,"
        " round_id INTEGER NOT NULL, pool_id INTEGER NOT NULL, annotator TEXT, created_at TEXT, updated_at TEXT,"
        " synced_at TEXT NOT NULL, withdrawn_at TEXT)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS skips_item ON skips(round_id, pool_id)")
    add_column(conn, "batch_items", "returned_at", "TEXT")  # the skip policy gave it back to the pool
    # an item is in one round's batch at a time; one the skip policy returned may be selected again
    conn.execute("DROP INDEX IF EXISTS batch_items_pool")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS batch_items_pool_open ON batch_items(pool_id)"
                 " WHERE returned_at IS NULL")
    conn.execute("CREATE INDEX IF NOT EXISTS batch_items_pool_id ON batch_items(pool_id)")
    add_column(conn, "rounds", "deadline_at", "TEXT")
    add_column(conn, "rounds", "closed_reason", "TEXT")


Migration = tuple[int, str, Callable[[sqlite3.Connection], None]]

MIGRATIONS: tuple[Migration, ...] = (
    (1, "base tables", m001_base),
    (2, "verification withdrawals", m002_withdrawals),
    (3, "annotation times", m003_annotation_times),
    (4, "learner version gate", m004_version_gate),
    (5, "several references and groups per item", m005_references_and_groups),
    (6, "clustering versions with centroids", m006_clustering_versions),
    (7, "skips, returned items, round deadlines", m007_team),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]
