"""An annotation team's traces beside the verdicts: skips (Label Studio's cancelled annotations), per item
tallies of votes and skips, the items a skip policy returned to the pool, and each task's decision under
the team's rule (overlap quota and adjudicators, recorded here by the loop so that status, the dashboard
and the export, which read only the ledger, decide as the loop does)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from loop.ledger.core import Store, now, placeholders
from loop.team import Decision, decide


class TeamTables(Store):
    """Skips upserted by annotation id and withdrawn when Label Studio no longer holds them; tallies."""

    def record_skips(self, rows: list[dict]) -> int:
        """Upsert skips (annotation_id, task_id, round_id, pool_id, annotator, created_at, updated_at) by
        annotation id; a withdrawn skip that shows up again is restored. Returns how many changed."""
        changed = 0
        stamp = now()
        with self.transaction() as conn:
            for r in rows:
                old = conn.execute(
                    "SELECT withdrawn_at FROM skips WHERE annotation_id = ?", [r["annotation_id"]]
                ).fetchone()
                if old is not None and old[0] is None:
                    continue
                conn.execute(
                    "INSERT OR REPLACE INTO skips(annotation_id, task_id, round_id, pool_id, annotator, created_at,"
                    " updated_at, synced_at, withdrawn_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    [r["annotation_id"], r["task_id"], r["round_id"], r["pool_id"], r.get("annotator"),
                     r.get("created_at"), r.get("updated_at"), stamp],
                )
                changed += 1
        return changed

    def absent_skips(self, present: set[int], task_ids: Iterable[int] | None = None, *,
                     project_id: int | None = None) -> list[int]:
        """Annotation ids of skips in force that `present` lacks (on `task_ids` if given, of rounds imported
        into `project_id` if given): candidates for withdrawal once Label Studio confirms them."""
        return self._absent("skips", present, task_ids, project_id)

    def withdraw_skips(self, annotation_ids: Iterable[int]) -> int:
        """Withdraw these skips (deleted, or re-submitted as a verdict); returns how many were in force."""
        stamp = now()
        withdrawn = 0
        with self.transaction() as conn:
            for annotation_id in sorted(set(annotation_ids)):
                withdrawn += conn.execute(
                    "UPDATE skips SET withdrawn_at = ? WHERE annotation_id = ? AND withdrawn_at IS NULL",
                    [stamp, annotation_id],
                ).rowcount
        return withdrawn

    def skips(self, round_id: int | None = None) -> list[dict]:
        """Skips in force (withdrawn ones left out), optionally of one round, joined with the item's cluster."""
        sql = ("SELECT s.*, b.cluster FROM skips s LEFT JOIN batch_items b ON b.round_id = s.round_id"
               " AND b.pool_id = s.pool_id WHERE s.withdrawn_at IS NULL")
        params: list[Any] = []
        if round_id is not None:
            sql += " AND s.round_id = ?"
            params.append(round_id)
        return self._rows(sql + " ORDER BY s.annotation_id", params)

    def item_tallies(self, round_id: int | None = None) -> list[dict]:
        """Per imported batch item (of one round, or all): round, pool id, cluster, task id, returned_at,
        `votes` (annotators with a verification in force; one per person) and `skips` (likewise)."""
        person = "count(DISTINCT coalesce({t}.annotator, '#' || {t}.annotation_id))"
        sql = (
            "SELECT b.round_id, b.pool_id, b.cluster, b.task_id, b.returned_at,"
            f" (SELECT {person.format(t='v')} FROM verifications v WHERE v.round_id = b.round_id"
            "   AND v.pool_id = b.pool_id AND v.withdrawn_at IS NULL) AS votes,"
            f" (SELECT {person.format(t='s')} FROM skips s WHERE s.round_id = b.round_id"
            "   AND s.pool_id = b.pool_id AND s.withdrawn_at IS NULL) AS skips"
            " FROM batch_items b WHERE b.task_id IS NOT NULL"
        )
        params: list[Any] = []
        if round_id is not None:
            sql += " AND b.round_id = ?"
            params.append(round_id)
        return self._rows(sql + " ORDER BY b.round_id, b.cluster, b.pool_id", params)

    def return_to_pool(self, round_id: int, pool_ids: Iterable[int]) -> int:
        """Give these items of a round back to the pool (selectable again); returns how many were not yet."""
        ids = sorted(set(pool_ids))
        if not ids:
            return 0
        with self.transaction() as conn:
            return conn.execute(
                f"UPDATE batch_items SET returned_at = ? WHERE round_id = ? AND returned_at IS NULL"
                f" AND pool_id IN ({placeholders(len(ids))})",
                [now(), round_id, *ids],
            ).rowcount

    # --- the team's rule and the decisions it makes ----------------------------------------------------
    def set_team_rule(self, quota: int, adjudicators: Iterable[str]) -> None:
        """Record how tasks are decided: people wanted per task and whose annotation settles a dispute."""
        value = json.dumps({"quota": int(quota), "adjudicators": sorted(adjudicators)})
        if self.find_meta("team_rule") != value:  # the common case reads only
            self.set_meta("team_rule", value)

    def team_rule(self) -> tuple[int, list[str]]:
        """(quota, adjudicators) as the loop last recorded them; (1, []) before it did."""
        rule = json.loads(self.find_meta("team_rule") or '{"quota": 1, "adjudicators": []}')
        return int(rule["quota"]), list(rule["adjudicators"])

    def item_votes(self, round_id: int | None = None) -> list[dict]:
        """Per verified item (round_id, pool_id): task id, cluster, draft, skips (people) and `rows`, its
        verifications in force (annotation_id, verdict, target, annotator, updated_at), by annotation id."""
        where, params = ("AND v.round_id = ?", [round_id]) if round_id is not None else ("", [])
        rows = self._rows(
            "SELECT v.annotation_id, v.round_id, v.pool_id, v.task_id, v.verdict, v.target, v.annotator,"
            " v.updated_at, b.cluster, b.draft FROM verifications v LEFT JOIN batch_items b"
            " ON b.round_id = v.round_id AND b.pool_id = v.pool_id"
            f" WHERE v.withdrawn_at IS NULL {where} ORDER BY v.annotation_id", params)
        skips = {(r[0], r[1]): r[2] for r in self.conn.execute(
            "SELECT round_id, pool_id, count(DISTINCT coalesce(annotator, '#' || annotation_id)) FROM skips"
            " WHERE withdrawn_at IS NULL GROUP BY round_id, pool_id")}
        items: dict[tuple[int, int], dict] = {}
        for r in rows:
            key = (r["round_id"], r["pool_id"])
            it = items.setdefault(key, {"round_id": key[0], "pool_id": key[1], "task_id": r["task_id"],
                                        "cluster": r["cluster"], "draft": r["draft"], "skips": skips.get(key, 0),
                                        "rows": []})
            it["rows"].append({k: r[k] for k in ("annotation_id", "verdict", "target", "annotator", "updated_at")})
        return list(items.values())

    def decisions(self, round_id: int | None = None) -> dict[tuple[int, int], tuple[dict, Decision]]:
        """(round_id, pool_id) -> (the item's votes, its Decision under the recorded team rule)."""
        quota, adjudicators = self.team_rule()
        return {(it["round_id"], it["pool_id"]): (it, decide(it["rows"], it["skips"], quota, adjudicators))
                for it in self.item_votes(round_id)}
