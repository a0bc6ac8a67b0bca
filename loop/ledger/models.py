"""The learner's versions: checkpoints, metrics, the gate's verdict, which one is in use, which are pruned."""

from __future__ import annotations

import json

from loop.errors import NotFound
from loop.ledger.core import Store, now


class ModelTables(Store):
    """Learner versions v0, v1, ... and the pointer to the one in use."""

    def add_model_version(
        self, version: str, *, path: str, parent: str | None, round_id: int | None, pairs: int, metrics: dict,
        promote: bool = True, note: str | None = None, expect_current: str | None = None,
    ) -> bool:
        """Register a checkpoint; `promote` makes it the version in use, else it is kept as 'held'.

        With `expect_current`, promotion is a compare-and-set: when another version was put in use
        meanwhile (a rollback while this one trained), this one is kept as 'held' with a note saying so.
        Returns whether it was promoted."""
        with self.transaction() as conn:
            current = self._value("SELECT value FROM meta WHERE key = 'learner_version'")
            if promote and expect_current is not None and current != expect_current:
                promote = False
                note = (f"held: {current} was put in use while this version trained from {expect_current}"
                        f" (was: {note})" if note else f"held: {current} was put in use meanwhile")
            conn.execute(
                "INSERT OR REPLACE INTO model_versions(version, path, parent, round_id, pairs, metrics, created_at,"
                " status, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [version, path, parent, round_id, pairs, json.dumps(metrics, sort_keys=True), now(),
                 "promoted" if promote else "held", note],
            )
            if promote:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('learner_version', ?)", [version])
        return promote

    def model_versions(self) -> list[dict]:
        """Every registered version (metrics decoded), oldest first."""
        rows = self._rows(  # v10 after v2: by number, not by text
            "SELECT * FROM model_versions ORDER BY created_at, CAST(substr(version, 2) AS INTEGER), version"
        )
        for r in rows:
            r["metrics"] = json.loads(r["metrics"] or "{}")
        return rows

    def find_current_model(self) -> dict | None:
        """The version in use (metrics decoded), or None before v0 is registered."""
        version = self.find_meta("learner_version")
        return None if version is None else self.find_model_version(version)

    def find_model_version(self, version: str) -> dict | None:
        """One registered version (metrics decoded), or None."""
        rows = self._rows("SELECT * FROM model_versions WHERE version = ?", [version])
        for r in rows:
            r["metrics"] = json.loads(r["metrics"] or "{}")
        return rows[0] if rows else None

    def get_model_version(self, version: str) -> dict:
        """One registered version (metrics decoded); raises NotFound for an unknown one."""
        return self._must(self.find_model_version(version), "learner version", version)

    def promote_model(self, version: str, note: str | None = None) -> None:
        """Make `version` the one in use (rollback or a manual promotion); raises NotFound if unknown."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM model_versions WHERE version = ?", [version]).fetchone() is None:
                raise NotFound("learner version", version)
            conn.execute("UPDATE model_versions SET status = 'promoted', note = coalesce(?, note) WHERE version = ?",
                         [note, version])
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('learner_version', ?)", [version])

    def mark_model_pruned(self, version: str) -> None:
        """Record that a version's checkpoint was deleted from disk (it stays in the history)."""
        with self.transaction() as conn:
            conn.execute("UPDATE model_versions SET pruned = 1 WHERE version = ?", [version])

