"""Pool items, their embeddings and clusters, and the learner's interim outputs with R's scores."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

import numpy as np

from loop.errors import LedgerError
from loop.ledger.core import Store, chunks, now, placeholders


class PoolTables(Store):
    """The pool U and what is computed over it: embeddings, clusters, interim outputs G(x) and scores R(G(x))."""

    def add_pool(self, rows: list[dict]) -> tuple[int, int]:
        """Insert pool rows (text, norm, reference(s), subgroup(s), source, line) in one transaction.

        Returns (added, duplicates): a row whose normalised text is already stored adds no item (its
        references and groups are attached to the stored one; `merge_pool` says how many).
        """
        counts = self.merge_pool(rows)
        return counts["added"], len(rows) - counts["added"]

    def merge_pool(self, rows: list[dict]) -> dict[str, int]:
        """Insert new items; a text already stored keeps its item and gains the references and groups it lacks.

        Counts: added items, enriched items (stored before, given something new), unchanged rows, and
        the references and group memberships stored.
        """
        counts = dict.fromkeys(("added", "enriched", "unchanged", "references", "groups"), 0)
        stamp = now()
        with self.transaction() as conn:
            for row in rows:
                refs, groups = _listed(row, "references", "reference"), _listed(row, "subgroups", "subgroup")
                cur = _insert_item(conn, row, refs, groups, stamp, "INSERT OR IGNORE")
                added = cur.rowcount == 1
                pool_id = cur.lastrowid if added else conn.execute(
                    "SELECT id FROM pool WHERE norm = ?", [row["norm"]]
                ).fetchone()[0]
                new_refs = _attach(conn, "pool_references", "reference", pool_id, refs)
                new_groups = _attach(conn, "pool_groups", "subgroup", pool_id, groups)
                counts["references"] += new_refs
                counts["groups"] += new_groups
                if added:
                    counts["added"] += 1
                elif new_refs or new_groups:  # the first reference and group become the item's own if it had none
                    conn.execute(
                        "UPDATE pool SET reference = coalesce(reference, ?), subgroup = coalesce(subgroup, ?)"
                        " WHERE id = ?",
                        [refs[0] if refs else None, groups[0] if groups else None, pool_id],
                    )
                    counts["enriched"] += 1
                else:
                    counts["unchanged"] += 1
        return counts

    def replace_pool(self, rows: list[dict]) -> dict[str, int]:
        """Make the pool what `rows` say, keeping every item annotators have seen.

        A stored text in `rows` takes their references and groups instead of its own (its id, and so
        its verifications, stay); a new text is added; a stored text not in `rows` is deleted with its
        embedding, cluster and scores unless it was ever sent to Label Studio, in which case it is kept
        and counted. One transaction: all of it or nothing.
        """
        counts = dict.fromkeys(("added", "updated", "unchanged", "removed", "kept", "references", "groups"), 0)
        stamp = now()
        with self.transaction() as conn:
            stored = {norm: i for i, norm in conn.execute("SELECT id, norm FROM pool")}
            sent = {r[0] for r in conn.execute("SELECT DISTINCT pool_id FROM batch_items")}
            for row in rows:
                refs, groups = _listed(row, "references", "reference"), _listed(row, "subgroups", "subgroup")
                pool_id = stored.pop(row["norm"], None)
                if pool_id is None:
                    pool_id = _insert_item(conn, row, refs, groups, stamp, "INSERT").lastrowid
                    counts["added"] += 1
                else:
                    before = (_stored(conn, "pool_references", "reference", pool_id),
                              _stored(conn, "pool_groups", "subgroup", pool_id))
                    if before == (refs, groups):
                        counts["unchanged"] += 1
                        continue
                    conn.execute("DELETE FROM pool_references WHERE pool_id = ?", [pool_id])
                    conn.execute("DELETE FROM pool_groups WHERE pool_id = ?", [pool_id])
                    conn.execute(
                        "UPDATE pool SET reference = ?, subgroup = ?, source = ?, line = ? WHERE id = ?",
                        [refs[0] if refs else None, groups[0] if groups else None, row.get("source"),
                         row.get("line"), pool_id],
                    )
                    counts["updated"] += 1
                counts["references"] += _attach(conn, "pool_references", "reference", pool_id, refs)
                counts["groups"] += _attach(conn, "pool_groups", "subgroup", pool_id, groups)
            gone = [i for i in stored.values() if i not in sent]
            counts["kept"] = len(stored) - len(gone)
            for chunk in chunks(gone):
                marks = placeholders(len(chunk))
                for table in ("embeddings", "clusters", "scores", "pool_references", "pool_groups"):
                    conn.execute(f"DELETE FROM {table} WHERE pool_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM pool WHERE id IN ({marks})", chunk)
            counts["removed"] = len(gone)
        return counts

    def references(self, ids: Iterable[int] | None = None) -> dict[int, list[str]]:
        """pool_id -> every reference of the item, the item's own first (items with none are absent)."""
        return self._lists("pool_references", "reference", ids)

    def memberships(self, ids: Iterable[int] | None = None) -> dict[int, list[str]]:
        """pool_id -> every subgroup the item belongs to, its own first (items with none are absent)."""
        return self._lists("pool_groups", "subgroup", ids)

    def _lists(self, table: str, column: str, ids: Iterable[int] | None) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        if ids is None:
            rows = self.conn.execute(f"SELECT pool_id, {column} FROM {table} ORDER BY pool_id, position").fetchall()
        else:
            rows = [
                r
                for chunk in chunks(list(ids))
                for r in self.conn.execute(
                    f"SELECT pool_id, {column} FROM {table} WHERE pool_id IN ({placeholders(len(chunk))})"
                    " ORDER BY pool_id, position",
                    chunk,
                )
            ]
        for pool_id, value in rows:
            out.setdefault(pool_id, []).append(value)
        return out

    def pool_count(self) -> int:
        """How many items the pool holds."""
        return self._value("SELECT count(*) FROM pool")

    def pool_items(self, ids: Iterable[int] | None = None) -> list[dict]:
        """Pool rows by id (in the given order), or all rows by id."""
        if ids is None:
            return self._rows("SELECT id, text, reference, subgroup FROM pool ORDER BY id")
        ids = list(ids)
        by_id = {
            r["id"]: r
            for chunk in chunks(ids)
            for r in self._rows(
                f"SELECT id, text, reference, subgroup FROM pool WHERE id IN ({placeholders(len(chunk))})",
                chunk,
            )
        }
        return [by_id[i] for i in ids if i in by_id]

    def unsent_pool_ids(self) -> list[int]:
        """Pool ids in no round's batch, or only in batches that returned them (a skip policy): the
        candidates for selection."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM pool WHERE id NOT IN (SELECT pool_id FROM batch_items WHERE returned_at IS NULL)"
                " ORDER BY id"
            )
        ]

    # --- embeddings and clusters ---------------------------------------------------------------
    def ids_without_embedding(self, model: str) -> list[int]:
        """Pool ids with no embedding under `model` yet (what embedding still has to do)."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM pool WHERE id NOT IN (SELECT pool_id FROM embeddings WHERE model = ?)"
                " ORDER BY id",
                [model],
            )
        ]

    def put_embeddings(self, model: str, ids: list[int], vectors: np.ndarray) -> None:
        """Store (or replace) the embeddings of `ids` under `model`, one row per item."""
        vectors = np.asarray(vectors, dtype=np.float32)
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings(pool_id, model, dim, vector) VALUES (?, ?, ?, ?)",
                [(i, model, vectors.shape[1], v.tobytes()) for i, v in zip(ids, vectors, strict=True)],
            )

    def embeddings(self, model: str) -> tuple[list[int], np.ndarray]:
        """All stored embeddings of one model as (pool ids, matrix)."""
        rows = self.conn.execute(
            "SELECT pool_id, dim, vector FROM embeddings WHERE model = ? ORDER BY pool_id", [model]
        ).fetchall()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        matrix = np.stack([np.frombuffer(r[2], dtype=np.float32) for r in rows])
        return [r[0] for r in rows], matrix

    def put_clusters(self, clustering: str, ids: list[int], labels: Iterable[int], *,
                     centroids: np.ndarray | None = None, reason: str | None = None) -> int:
        """Replace the whole clustering with a new version (identity, every item's cluster, the centroids
        later items join); returns its version number."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM clusters")
            conn.executemany(
                "INSERT INTO clusters(pool_id, cluster, clustering) VALUES (?, ?, ?)",
                [(i, int(c), clustering) for i, c in zip(ids, labels, strict=True)],
            )
            cur = conn.execute(
                "INSERT INTO clusterings(identity, centroids, k, dim, reason, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                [clustering, *_centroid_blob(centroids), reason, now()],
            )
            return cur.lastrowid

    def add_to_clusters(self, ids: list[int], labels: Iterable[int]) -> None:
        """Place items that joined the pool after the clustering in its clusters (the version stays)."""
        clustering = self.find_clustering()
        if clustering is None:
            raise LedgerError("no clustering to add items to; cluster the pool first")
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO clusters(pool_id, cluster, clustering) VALUES (?, ?, ?)",
                [(i, int(c), clustering) for i, c in zip(ids, labels, strict=True)],
            )

    def set_centroids(self, version: int, centroids: np.ndarray) -> None:
        """Store the centroids of a clustering that was saved without them (before versions)."""
        with self.transaction() as conn:
            conn.execute("UPDATE clusterings SET centroids = ?, k = ?, dim = ? WHERE version = ?",
                         [*_centroid_blob(centroids), version])

    def find_clustering_version(self) -> dict | None:
        """The current clustering: version, identity, centroids (None if stored without), reason; or None."""
        rows = self._rows("SELECT * FROM clusterings ORDER BY version DESC LIMIT 1")
        if not rows:
            return None
        row = rows[0]
        blob = row.pop("centroids")
        row["centroids"] = (None if blob is None else
                            np.frombuffer(blob, dtype=np.float32).reshape(row["k"], row["dim"]).copy())
        return row

    def clusterings(self) -> list[dict]:
        """Every clustering version, oldest first, without centroids (for status)."""
        return self._rows("SELECT version, identity, k, reason, created_at FROM clusterings ORDER BY version")

    def clusters(self) -> dict[int, int]:
        """pool_id -> cluster of the stored clustering."""
        return dict(self.conn.execute("SELECT pool_id, cluster FROM clusters").fetchall())

    def find_clustering(self) -> str | None:
        """The identity of the stored clustering (model, K, seed), or None before the first."""
        return self._value("SELECT clustering FROM clusters LIMIT 1")

    # --- interim outputs and scores ------------------------------------------------------------
    def ids_without_score(self, learner_version: str, scorer: str, ids: list[int]) -> list[int]:
        """Those of `ids` with no interim output and score under this learner version and R."""
        have = {
            r[0]
            for r in self.conn.execute(
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
        """pool_id -> (interim output, score) under one learner version and R."""
        return {
            r[0]: (r[1], r[2])
            for r in self.conn.execute(
                "SELECT pool_id, interim, score FROM scores WHERE learner_version = ? AND scorer = ?",
                [learner_version, scorer],
            )
        }

    def interims(self, learner_version: str, ids: list[int]) -> dict[int, str]:
        """Stored interim outputs G(x) of one version under any scorer (generation need not be redone)."""
        wanted = set(ids)
        return {
            r[0]: r[1]
            for r in self.conn.execute(
                "SELECT pool_id, interim FROM scores WHERE learner_version = ?", [learner_version]
            )
            if r[0] in wanted
        }



def _centroid_blob(centroids: np.ndarray | None) -> list:
    """(blob, k, dim) of a centroid matrix for the clusterings table; Nones when there is none."""
    if centroids is None:
        return [None, None, None]
    c = np.asarray(centroids, dtype=np.float32)
    return [c.tobytes(), c.shape[0], c.shape[1]]


def _listed(row: dict, many: str, one: str) -> list[str]:
    """A row's references (or groups): its list when it has one, else its single value, else none."""
    values = row.get(many)
    if values is None:
        values = [row[one]] if row.get(one) else []
    return list(dict.fromkeys(values))


def _insert_item(conn: sqlite3.Connection, row: dict, refs: list[str], groups: list[str], stamp: str,
                 verb: str) -> sqlite3.Cursor:
    """Insert one pool item, its first reference and group as its own (`verb`: INSERT or INSERT OR IGNORE)."""
    return conn.execute(
        f"{verb} INTO pool(text, reference, subgroup, norm, source, line, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [row["text"], refs[0] if refs else None, groups[0] if groups else None, row["norm"], row.get("source"),
         row.get("line"), stamp],
    )


def _attach(conn: sqlite3.Connection, table: str, column: str, pool_id: int, values: list[str]) -> int:
    """Store the values an item lacks after the ones it has (their order kept); how many were new."""
    if not values:
        return 0
    start = conn.execute(
        f"SELECT coalesce(max(position), -1) + 1 FROM {table} WHERE pool_id = ?", [pool_id]
    ).fetchone()[0]
    added = 0
    for value in values:
        cur = conn.execute(
            f"INSERT OR IGNORE INTO {table}(pool_id, position, {column}) VALUES (?, ?, ?)",
            [pool_id, start + added, value],
        )
        added += cur.rowcount
    return added


def _stored(conn: sqlite3.Connection, table: str, column: str, pool_id: int) -> list[str]:
    """An item's stored references (or groups), in order."""
    return [r[0] for r in conn.execute(f"SELECT {column} FROM {table} WHERE pool_id = ? ORDER BY position", [pool_id])]
