"""Webhook events from Label Studio: recorded by the backend at once, consumed by the scheduler's sync."""

from __future__ import annotations

from loop.ledger.core import Store, now


class EventTables(Store):
    """Webhook events, pending until a sync has read the tasks they name."""

    def record_event(self, action: str | None, project_id: int | None, task_id: int | None,
                     annotation_id: int | None) -> int:
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO events(received_at, action, project_id, task_id, annotation_id) VALUES (?, ?, ?, ?, ?)",
                [now(), action, project_id, task_id, annotation_id],
            )
            return cur.lastrowid

    def pending_events(self) -> int:
        """Webhook events not yet consumed by a sync."""
        return self._value("SELECT count(*) FROM events WHERE processed = 0")

    def pending_event_tasks(self) -> tuple[int, list[int]]:
        """(highest pending event id, distinct task ids those events name) for a targeted sync."""
        rows = self.conn.execute("SELECT id, task_id FROM events WHERE processed = 0 ORDER BY id").fetchall()
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

