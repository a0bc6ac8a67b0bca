"""Read-only views for the project manager's status and the data owner's export."""

from __future__ import annotations

from collections.abc import Iterable

from loop.ledger.core import Store, placeholders


class ReportViews(Store):
    """Joins over rounds, batches, verifications and the pool: progress, coverage, throughput, export rows."""

    # "latest" = the newest annotation in force of each pool item: the verdict an item counts under.
    _LATEST = (
        "SELECT v.* FROM verifications v WHERE v.withdrawn_at IS NULL AND v.annotation_id = ("
        " SELECT max(v2.annotation_id) FROM verifications v2 WHERE v2.pool_id = v.pool_id"
        " AND v2.withdrawn_at IS NULL)"
    )

    def cluster_progress(self) -> list[dict]:
        """Per round and cluster: selected, failed and imported items and the round's clustering version
        (verdicts come from `decisions`, which apply the team's rule)."""
        return self._rows(
            "SELECT b.round_id, b.cluster, r.clustering, count(*) AS selected, count(b.teacher_error) AS failed,"
            " count(b.task_id) AS imported"
            " FROM batch_items b JOIN rounds r ON r.id = b.round_id"
            " GROUP BY b.round_id, b.cluster ORDER BY b.round_id, b.cluster"
        )

    def coverage(self) -> list[dict]:
        """Per cluster and subgroup of the pool: items, items ever selected, items labeled (accept/edit)."""
        return self._rows(
            f"WITH latest AS ({self._LATEST})"
            " SELECT c.cluster, p.subgroup, count(*) AS pool, count(b.pool_id) AS selected,"
            " count(CASE WHEN l.verdict IN ('accept', 'edit') THEN 1 END) AS labeled"
            " FROM pool p LEFT JOIN clusters c ON c.pool_id = p.id"
            " LEFT JOIN (SELECT DISTINCT pool_id FROM batch_items) b ON b.pool_id = p.id"  # a returned item twice
            " LEFT JOIN latest l ON l.pool_id = p.id"
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
            " (SELECT value FROM meta WHERE key = 'round:' || l.round_id || ':model_version') AS teacher,"
            " (SELECT count(*) FROM skips s WHERE s.round_id = l.round_id AND s.pool_id = l.pool_id"
            "  AND s.withdrawn_at IS NULL) AS skips"
            " FROM latest l JOIN pool p ON p.id = l.pool_id JOIN rounds r ON r.id = l.round_id"
            " LEFT JOIN batch_items b ON b.round_id = l.round_id AND b.pool_id = l.pool_id"
        )
        where, params = [], []
        if round_ids is not None:
            ids = list(round_ids)
            where.append(f"l.round_id IN ({placeholders(len(ids)) or 'NULL'})")
            params += ids
        if verdicts is not None:
            vs = list(verdicts)
            where.append(f"l.verdict IN ({placeholders(len(vs)) or 'NULL'})")
            params += vs
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._rows(sql + " ORDER BY l.round_id, l.pool_id", params)

    def annotator_salt(self) -> str:
        """The random salt for anonymised annotator ids: created once, kept in meta, never exported."""
        import secrets

        salt = self.find_meta("annotator_salt")
        if salt is not None:  # the common case reads only: the dashboard must not take the write lock
            return salt
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('annotator_salt', ?)", [secrets.token_hex(16)]
            )
        return self.find_meta("annotator_salt")


