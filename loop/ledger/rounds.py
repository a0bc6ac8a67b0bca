"""Rounds, their batch items (draft, task id) and the top-ups that replace items the teacher failed on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from loop.errors import StaleState
from loop.ledger.core import Store, now
from loop.vocab import ROUND_STATES

if TYPE_CHECKING:  # the ledger never loads the teacher (nor openai) to store its answers
    from loop.teacher import Draft


class RoundTables(Store):
    """Rounds and their batches: what was selected, distilled and imported, by pool item."""

    def create_round(
        self, *, strategy: str, budget: int, learner_version: str, items: list[dict], clustering: int | None = None
    ) -> int:
        """A new round in state `selected` with its batch (pool_id, cluster, score, interim), atomically;
        `clustering` is the version its clusters belong to."""
        stamp = now()
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO rounds(state, strategy, budget, learner_version, clustering, created_at, updated_at)"
                " VALUES ('selected', ?, ?, ?, ?, ?, ?)",
                [strategy, budget, learner_version, clustering, stamp, stamp],
            )
            round_id = cur.lastrowid
            conn.executemany(
                "INSERT INTO batch_items(round_id, pool_id, cluster, score, interim) VALUES (?, ?, ?, ?, ?)",
                [(round_id, it["pool_id"], it["cluster"], it["score"], it.get("interim")) for it in items],
            )
        return round_id

    def find_current_round(self) -> dict | None:
        """The newest round, whatever its state; None before the first."""
        rows = self._rows("SELECT * FROM rounds ORDER BY id DESC LIMIT 1")
        return rows[0] if rows else None

    def open_rounds(self) -> list[dict]:
        """The rounds not done yet, oldest first: the one being verified (or trained), then any look-ahead."""
        return self._rows("SELECT * FROM rounds WHERE state != 'done' ORDER BY id")

    def find_round(self, round_id: int) -> dict | None:
        """One round, or None."""
        rows = self._rows("SELECT * FROM rounds WHERE id = ?", [round_id])
        return rows[0] if rows else None

    def get_round(self, round_id: int) -> dict:
        """One round; raises NotFound when there is no such round."""
        return self._must(self.find_round(round_id), "round", round_id)

    def rounds(self) -> list[dict]:
        """Every round, oldest first."""
        return self._rows("SELECT * FROM rounds ORDER BY id")

    def set_round_state(self, round_id: int, state: str, *, expect: str | None = None, **fields: Any) -> None:
        """Move a round to `state`; with `expect`, only from that state.

        Raises StaleState when the round is not in `expect` (another process moved it first)."""
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
                raise StaleState(f"round {round_id}: cannot move to {state!r} (expected state {expect!r})")

    def set_round_project(self, round_id: int, project_id: int) -> None:
        """Record the Label Studio project a round's tasks are imported into, before they are sent: a
        sync withdraws only verifications of rounds imported into the project it reads."""
        with self.transaction() as conn:
            conn.execute("UPDATE rounds SET project_id = ?, updated_at = ? WHERE id = ?", [project_id, now(), round_id])

    def set_round_deadline(self, round_id: int, deadline_at: str | None) -> None:
        """Set (or, with None, clear) when a verifying round closes with what is verified by then (ISO 8601 UTC)."""
        with self.transaction() as conn:
            conn.execute("UPDATE rounds SET deadline_at = ?, updated_at = ? WHERE id = ?",
                         [deadline_at, now(), round_id])

    def set_round_error(self, round_id: int, error: str | None) -> None:
        """Record (or, with None, clear) the last failure of a round's step, for the status page."""
        with self.transaction() as conn:
            conn.execute("UPDATE rounds SET error = ?, updated_at = ? WHERE id = ?", [error, now(), round_id])

    def batch(self, round_id: int) -> list[dict]:
        """The round's batch items joined with their pool text, in selection order."""
        return self._rows(
            "SELECT b.*, p.text, p.reference, p.subgroup FROM batch_items b JOIN pool p ON p.id = b.pool_id"
            " WHERE b.round_id = ? ORDER BY b.cluster, b.score DESC, b.pool_id",
            [round_id],
        )

    def set_drafts(self, round_id: int, drafts: Mapping[int, Draft]) -> None:
        """Store the teacher's answers (pool_id -> Draft: prompt key, output or error) on a round's batch items."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE batch_items SET prompt_key = ?, draft = ?, teacher_error = ?"
                " WHERE round_id = ? AND pool_id = ?",
                [(d.key, d.text, d.error, round_id, pid) for pid, d in drafts.items()],
            )

    def set_task_ids(self, round_id: int, task_ids: dict[int, int]) -> None:
        """pool_id -> Label Studio task id for a round's batch items."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE batch_items SET task_id = ? WHERE round_id = ? AND pool_id = ?",
                [(t, round_id, pid) for pid, t in task_ids.items()],
            )

    def find_item_by_task(self, task_id: int) -> dict | None:
        """The batch item imported as this Label Studio task (with its pool text), or None."""
        rows = self._rows(
            "SELECT b.*, p.text, p.reference FROM batch_items b JOIN pool p ON p.id = b.pool_id"
            " WHERE b.task_id = ?",
            [task_id],
        )
        return rows[0] if rows else None

    def find_item(self, round_id: int, pool_id: int) -> dict | None:
        """One round's batch item for a pool item (with its pool text), or None."""
        rows = self._rows(
            "SELECT b.*, p.text, p.reference FROM batch_items b JOIN pool p ON p.id = b.pool_id"
            " WHERE b.round_id = ? AND b.pool_id = ?",
            [round_id, pool_id],
        )
        return rows[0] if rows else None

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
            self.conn.execute("SELECT pool_id, replaces FROM batch_topups WHERE round_id = ?", [round_id])
        )

