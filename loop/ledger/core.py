"""The ledger's foundation: the SQLite file, a connection per thread, transactions and migrations.

Every table-group module (pool, rounds, teacher, verifications, models, events, reports) builds on
`Store`; none opens a connection or a transaction of its own. Connections are per thread (Flask
threads and the scheduler share a file, not a connection); WAL mode lets readers run beside the
writer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loop.errors import LedgerError, NotFound
from loop.ledger.schema import MIGRATIONS, SCHEMA_VERSION

BUSY_TIMEOUT_S = 30.0  # how long a statement waits for another process's write lock


def _retry_busy(statement: Callable[[], Any], timeout: float = BUSY_TIMEOUT_S) -> Any:
    """Run `statement`, retrying while SQLite answers busy or locked: switching a new file to WAL
    does not wait on the busy timeout, so processes opening it at the same moment can fail at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def now() -> str:
    """UTC timestamp in ISO 8601, second precision: what every *_at column holds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def chunks(seq: list, size: int = 900) -> Iterator[list]:
    """Slices of at most `size` items: SQLite limits the number of `?` in one statement."""
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


SQLITE_MAX_INT = 2**63 - 1


def row_id(value: object) -> int | None:
    """`value` when it can be a row id from outside (an int, not a bool, 0..2^63-1: what SQLite can
    compare), else None: an id no row of ours can have is a miss, never an overflow."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SQLITE_MAX_INT:
        return value
    return None


def placeholders(n: int) -> str:
    """`?, ?, ?` for an IN list of n values."""
    return ",".join("?" * n)


class Store:
    """The connection, transactions and schema of one ledger file; the table groups build on it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.migrate()

    # --- connections -------------------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, in autocommit mode: transactions are explicit)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True)
            _retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            self._local.depth = 0
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: all of it lands or none of it does. A nested block joins the
        outer one (its writes land with the outer COMMIT)."""
        conn = self.conn
        if self._local.depth:
            self._local.depth += 1
            try:
                yield conn
            finally:
                self._local.depth -= 1
            return
        conn.execute("BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also when COMMIT itself failed: never leave it open
                conn.execute("ROLLBACK")
            raise
        finally:
            self._local.depth = 0

    def close(self) -> None:
        """Close this thread's connection (others close with their threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def remove(self) -> None:
        """Close and delete the ledger file with its WAL and shared-memory files (a failed first init)."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    # --- schema ----------------------------------------------------------------------------------
    def schema_version(self) -> int:
        """The schema version this file is at (0 for a new, empty file)."""
        has_meta = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if not has_meta:
            return 0
        value = self._value("SELECT value FROM meta WHERE key = 'schema_version'")
        return int(value) if value is not None else 0

    def migrate(self, upto: int = SCHEMA_VERSION) -> int:
        """Apply the migrations this file lacks, all in one transaction, and record the version reached
        (returned). Each step tolerates a file that already has part of it (ledgers written before
        versions were recorded)."""
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: schema version {version} is newer than this labelloop's {SCHEMA_VERSION};"
                " upgrade labelloop"
            )
        if version >= upto:
            return version  # the common case reads only: the web workers must not queue for the write lock
        # one IMMEDIATE transaction for all steps, the version read again inside it: processes that open
        # a new file at the same moment (the container's workers and scheduler) migrate one after another
        with self.transaction() as conn:
            version = self.schema_version()
            for number, _title, step in MIGRATIONS:
                if version < number <= upto:
                    step(conn)
                    version = number
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", [str(version)])
        return version

    # --- reading -----------------------------------------------------------------------------------
    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        cur = self.conn.execute(sql, list(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def _value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = self.conn.execute(sql, list(params)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _must(row: dict | None, what: str, key: object) -> dict:
        """`row`, or NotFound naming what was looked up: how every `get_*` is its `find_*` that must hit."""
        if row is None:
            raise NotFound(what, key)
        return row

    def _column(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return [row[0] for row in self.conn.execute(sql, list(params))]

    # --- meta: small named values (project id, last sync, per-round teacher label, salt) ---------
    def _absent(self, table: str, present: set[int], task_ids: Iterable[int] | None,
                project_id: int | None) -> list[int]:
        """Annotation ids in force in `table` (verifications or skips) that `present` lacks, on `task_ids`
        if given, of rounds imported into `project_id` if given (a round with no project recorded, from a
        ledger older than that record, counts as the project read)."""
        sql = (f"SELECT t.annotation_id FROM {table} t LEFT JOIN rounds r ON r.id = t.round_id"
               " WHERE t.withdrawn_at IS NULL")
        params: list[Any] = []
        if project_id is not None:
            sql += " AND (r.project_id IS NULL OR r.project_id = ?)"
            params.append(int(project_id))
        if task_ids is not None:
            task_ids = list(task_ids)
            if not task_ids:
                return []
            sql += f" AND t.task_id IN ({placeholders(len(task_ids))})"
            params += task_ids
        return [row[0] for row in self.conn.execute(sql + " ORDER BY t.annotation_id", params)
                if row[0] not in present]

    def find_meta(self, key: str, default: str | None = None) -> str | None:
        """A stored value, or `default` when it was never set."""
        value = self._value("SELECT value FROM meta WHERE key = ?", [key])
        return default if value is None else value

    def set_meta(self, key: str, value: str | None) -> None:
        """Store (or replace) a named value."""
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [key, value])
