"""The teacher's output cache (keyed by prompt hash) and its accounting: one row per attempt."""

from __future__ import annotations

from loop.ledger.core import Store, chunks, now, placeholders


class TeacherTables(Store):
    """Teacher outputs (a cache that makes re-runs free) and every attempt with its tokens and cost."""

    def cached_outputs(self, keys: list[str]) -> dict[str, str]:
        """prompt key -> stored teacher output, for the keys that have one."""
        out: dict[str, str] = {}
        for chunk in chunks(keys):
            out.update(
                self.conn.execute(
                    f"SELECT key, output FROM teacher_cache WHERE key IN ({placeholders(len(chunk))})", chunk
                ).fetchall()
            )
        return out

    def cache_output(
        self, key: str, *, model: str, template: str, output: str,
        prompt_tokens: int | None = None, completion_tokens: int | None = None,
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO teacher_cache(key, model, template, output, prompt_tokens,"
                " completion_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [key, model, template, output, prompt_tokens, completion_tokens, now()],
            )

    # --- teacher accounting and batch top-ups ------------------------------------------------------
    _CALL_FIELDS = ("round_id", "pool_id", "key", "model", "attempt", "status", "reason", "final",
                    "prompt_tokens", "completion_tokens", "cost", "latency_ms")

    def record_teacher_calls(self, rows: list[dict]) -> None:
        """Append teacher attempts (one row per HTTP request, or one `cached` row per cache hit)."""
        if not rows:
            return
        stamp = now()
        with self.transaction() as conn:
            conn.executemany(
                f"INSERT INTO teacher_calls({', '.join(self._CALL_FIELDS)}, created_at)"
                f" VALUES ({', '.join('?' * (len(self._CALL_FIELDS) + 1))})",
                [[r.get(f, 0 if f in ("final", "prompt_tokens", "completion_tokens", "cost") else None)
                  for f in self._CALL_FIELDS] + [stamp] for r in rows],
            )

    def teacher_usage(self, round_id: int | None = None) -> dict:
        """What the teacher did and cost, for one round or in total.

        calls: items sent to the API; attempts: HTTP requests, retries included; failures: items that
        ended without a valid output; cached: items answered from the cache; tokens and cost (USD)
        summed over every attempt, since a retried or rejected answer is billed too.
        """
        where, params = ("WHERE round_id = ?", [round_id]) if round_id is not None else ("", [])
        row = self.conn.execute(
            "SELECT count(CASE WHEN final = 1 AND status != 'cached' THEN 1 END),"
            " count(CASE WHEN status != 'cached' THEN 1 END),"
            " count(CASE WHEN final = 1 AND status = 'failed' THEN 1 END),"
            " count(CASE WHEN status = 'cached' THEN 1 END),"
            " coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(cost), 0)"
            f" FROM teacher_calls {where}",
            params,
        ).fetchone()
        keys = ("calls", "attempts", "failures", "cached", "prompt_tokens", "completion_tokens", "cost")
        return dict(zip(keys, row, strict=True))

    def teacher_usage_by_item(self, round_id: int) -> dict[int, dict]:
        """pool_id -> attempts, prompt and completion tokens and cost of one round's items."""
        return {
            r["pool_id"]: r
            for r in self._rows(
                "SELECT pool_id, count(CASE WHEN status != 'cached' THEN 1 END) AS attempts,"
                " sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,"
                " sum(cost) AS cost FROM teacher_calls WHERE round_id = ? GROUP BY pool_id",
                [round_id],
            )
        }

    def teacher_failures(self, round_id: int | None = None) -> list[dict]:
        """The final failed attempt of every item that got no valid output: pool_id, reason, attempt."""
        where, params = ("AND round_id = ?", [round_id]) if round_id is not None else ("", [])
        return self._rows(
            "SELECT round_id, pool_id, attempt, reason FROM teacher_calls"
            f" WHERE final = 1 AND status = 'failed' {where} ORDER BY id",
            params,
        )

