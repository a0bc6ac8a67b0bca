"""Verifications: one row per Label Studio annotation in force, with the history of every change."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from loop.ledger.core import Store, now
from loop.vocab import USABLE_VERDICTS


class VerificationTables(Store):
    """Annotators' verdicts, upserted by annotation id (latest wins), withdrawn when deleted."""

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

    def absent_verifications(
        self, present: set[int], task_ids: Iterable[int] | None = None, *, project_id: int | None = None
    ) -> list[int]:
        """Annotation ids of verifications in force that `present` lacks: candidates for withdrawal, once
        Label Studio confirms them gone (a listing can be incomplete; see `withdraw_annotations`).

        With `task_ids`, only verifications of those tasks; with `project_id`, only those of rounds
        imported into that project, so that reading one project never judges another's (a round with
        no project recorded, from a ledger older than that record, counts as the project read).
        """
        return self._absent("verifications", present, task_ids, project_id)

    def withdraw_annotations(self, annotation_ids: Iterable[int]) -> int:
        """Withdraw the verifications of these annotations (Label Studio confirmed them gone); returns
        how many were in force. Each withdrawal is appended to `verification_history`."""
        withdrawn = 0
        stamp = now()
        with self.transaction() as conn:
            for annotation_id in sorted(set(annotation_ids)):
                cur = conn.execute(
                    "UPDATE verifications SET withdrawn_at = ? WHERE annotation_id = ? AND withdrawn_at IS NULL",
                    [stamp, annotation_id],
                )
                if cur.rowcount:
                    conn.execute(
                        "INSERT INTO verification_history(annotation_id, change, recorded_at)"
                        " VALUES (?, 'withdrawn', ?)",
                        [annotation_id, stamp],
                    )
                    withdrawn += 1
        return withdrawn

    def verification_history(self, annotation_id: int) -> list[dict]:
        """Every recorded change of one annotation (created, updated, withdrawn), oldest first."""
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
        """(source, target) for every item decided accept or edit under the team's rule (`decisions`); one
        pair per pool item, from its newest decided round. With one person per task: its latest annotation."""
        best: dict[int, tuple[int, str | None]] = {}
        for (_, pool_id), (item, decision) in self.decisions().items():
            newest = item["rows"][-1]["annotation_id"]
            if decision.status == "decided" and newest > best.get(pool_id, (-1, None))[0]:
                best[pool_id] = (newest, decision.target if decision.verdict in USABLE_VERDICTS else None)
        texts = {p["id"]: p["text"] for p in self.pool_items(sorted(best))}
        return [(texts[pid], target) for pid, (_, target) in sorted(best.items()) if target is not None]

    def round_progress(self, round_id: int) -> dict:
        """Counts for one round: selected, distilled, failed, imported, verified, and verdicts."""
        row = self.conn.execute(
            "SELECT count(*), count(draft), count(teacher_error), count(task_id),"
            " count(DISTINCT CASE WHEN EXISTS (SELECT 1 FROM verifications v WHERE v.round_id = b.round_id"
            "   AND v.pool_id = b.pool_id AND v.withdrawn_at IS NULL) THEN b.pool_id END)"
            " FROM batch_items b WHERE round_id = ?",
            [round_id],
        ).fetchone()
        verdicts = dict(
            self.conn.execute(
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

