"""Pool items, their embeddings and clusters, and the learner's interim outputs with R's scores."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from loop.ledger.core import Store, chunks, now, placeholders


class PoolTables(Store):
    """The pool U and what is computed over it: embeddings, clusters, interim outputs G(x) and scores R(G(x))."""

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

    def put_clusters(self, clustering: str, ids: list[int], labels: Iterable[int]) -> None:
        """Replace the whole clustering: every item's cluster under one clustering identity."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM clusters")
            conn.executemany(
                "INSERT INTO clusters(pool_id, cluster, clustering) VALUES (?, ?, ?)",
                [(i, int(c), clustering) for i, c in zip(ids, labels, strict=True)],
            )

    def clusters(self) -> dict[int, int]:
        """pool_id -> cluster of the stored clustering."""
        return dict(self.conn.execute("SELECT pool_id, cluster FROM clusters").fetchall())

    def find_clustering(self) -> str | None:
        """The identity of the stored clustering (model, K, seed, pool size), or None before the first."""
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

