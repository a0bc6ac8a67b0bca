"""The rules of an annotation team's work, as plain functions over the ledger's tallies: when a task is
settled, when a round can close, and what a skip policy does at the close.

A task wants `quota` people (Label Studio's overlap). Everyone assigned it acts by a verdict or a skip,
so a task is settled once its voters and skippers together reach the quota; a task settled by skips
alone is skipped. With one annotator (or Label Studio's default of re-queueing a skipped task for others
only) a skipped task would otherwise wait forever.
"""

from __future__ import annotations

from collections.abc import Iterable


def is_settled(votes: int, skips: int, quota: int) -> bool:
    """Whether everyone a task was assigned to has acted on it (a verdict or a skip)."""
    return votes + skips >= quota


def tally(items: Iterable[dict], quota: int = 1) -> dict:
    """Counts over item tallies (`Ledger.item_tallies`): imported, verified (a verdict at least),
    skipped (skips only), settled, open (still waited for) and returned (given back to the pool)."""
    out = {"imported": 0, "verified": 0, "skipped": 0, "settled": 0, "open": 0, "returned": 0}
    for it in items:
        votes, skips = int(it["votes"] or 0), int(it["skips"] or 0)
        out["imported"] += 1
        out["verified"] += votes > 0
        out["skipped"] += votes == 0 and skips > 0
        settled = is_settled(votes, skips, quota)
        out["settled"] += settled
        out["open"] += not settled
        out["returned"] += it.get("returned_at") is not None
    return out


def skipped_items(items: Iterable[dict]) -> list[int]:
    """Pool ids of the items that have skips and no verdict: what a skip policy acts on at a round's close."""
    return [int(it["pool_id"]) for it in items if not it["votes"] and it["skips"]]
