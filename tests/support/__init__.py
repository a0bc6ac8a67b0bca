"""Helpers the tests share: servers they start, ledgers they build, the in-memory Label Studio."""

from __future__ import annotations


def task_items(n: int, start: int = 0, prefix: str = "item") -> list[dict]:
    """n items in the form `Studio.import_batch` takes, with distinct keys, texts, drafts and scores."""
    return [
        {
            "key": f"{prefix}-{i}",
            "text": f"source text {i}",
            "draft": f"draft reply {i}",
            "score": round(0.1 + i / 100, 4),
            "meta": {"cluster": i % 3, "round": 1},
        }
        for i in range(start, start + n)
    ]


def settle(ctx, limit: int = 20):
    """Advance a `loop.rounds.Context` until the loop waits or idles; returns the last step."""
    from loop import rounds

    for _ in range(limit):
        step = rounds.advance(ctx)
        if step.settled:
            return step
    raise AssertionError("the loop did not settle")
