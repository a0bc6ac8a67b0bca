"""Simulated annotators: verify imported tasks through the Label Studio API, as people would.

Used by `make demo` and the end-to-end test: each pending task of the open rounds is accepted,
edited or rejected at configurable rates, with a seeded generator so that a run is repeatable; with an
overlap of 2 or more, that many simulated users verify every task and the first skips one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from loop.errors import LabelloopError
from loop.rounds import Context
from loop.vocab import VERDICTS


def edit(draft: str) -> str:
    """A small, always visible edit of the teacher's draft."""
    draft = draft.strip()
    return f"To be fair, {draft[:1].lower()}{draft[1:]}" if draft else "(rewritten)"


def choose(n: int, rng: np.random.Generator, rates: tuple[float, float, float]) -> list[str]:
    """n verdicts drawn at the given (accept, edit, reject) rates."""
    p = np.asarray(rates, dtype=float)
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"verdict rates must be non-negative and not all zero, got {rates}")
    return [VERDICTS[i] for i in rng.choice(3, size=n, p=p / p.sum())]


def annotate_pending(
    ctx: Context,
    rng: np.random.Generator,
    rates: tuple[float, float, float] = (0.7, 0.2, 0.1),
    done: set | None = None,
    *,
    people: int = 1,
    skip_one: bool = False,
) -> int:
    """Annotate every imported task of the open rounds (the one being verified and any look-ahead, oldest
    first) that still waits for someone; returns how many annotations (skips included) were made.

    With `people` = 1 the API key's owner verifies each task with no verification yet. With more, that
    many simulated users (annotator-1@..., created in Label Studio) each act on every task they have not
    acted on, drawing verdicts independently (so some disagree, as an overlap team does); with
    `skip_one` the first of them skips each round's first task. `done` holds what was already done
    ((person, task id) pairs, or task ids for one person) and is updated, so that an annotation not yet
    synced into the ledger is not made twice.
    """
    done = set() if done is None else done
    return sum(_annotate_round(ctx, rnd["id"], rng, rates, done, people, skip_one)
               for rnd in ctx.ledger.open_rounds() if rnd["state"] in ("imported", "verifying"))


def _annotate_round(ctx: Context, round_id: int, rng: np.random.Generator, rates: tuple[float, float, float],
                    done: set, people: int, skip_one: bool) -> int:
    batch = [b for b in ctx.ledger.batch(round_id) if b["task_id"]]
    if people == 1:
        verified = {v["pool_id"] for v in ctx.ledger.verifications(round_id)}
        pending = [b for b in batch if b["pool_id"] not in verified and b["task_id"] not in done]
        for item, verdict in zip(pending, choose(len(pending), rng, rates), strict=True):
            _verify(ctx, item, verdict)
            done.add(item["task_id"])
        return len(pending)
    made = 0
    acted = [(v["annotator"], v["task_id"]) for v in ctx.ledger.verifications(round_id)]
    acted += [(k["annotator"], k["task_id"]) for k in ctx.ledger.skips(round_id)]
    for person in range(1, people + 1):
        email = f"annotator-{person}@labelloop.local"
        user = ctx.studio.ensure_user(email)
        pending = [b for b in batch if (email, b["task_id"]) not in done and (email, b["task_id"]) not in acted]
        for item, verdict in zip(pending, choose(len(pending), rng, rates), strict=True):
            if skip_one and person == 1 and item["task_id"] == batch[0]["task_id"]:
                ctx.studio.skip(item["task_id"], user_id=user)
            else:
                _verify(ctx, item, verdict, user)
            done.add((email, item["task_id"]))
            made += 1
    return made


def _verify(ctx: Context, item: dict, verdict: str, user: int | None = None) -> None:
    text = edit(item["draft"]) if verdict == "edit" else item["draft"]
    comment = "simulated annotator" if verdict != "accept" else None
    ctx.studio.annotate(item["task_id"], verdict=verdict, text=text, comment=comment, user_id=user)


def verify_until_done(
    ctx: Context, rounds: int, *, timeout: float, seed: int = 0, on_annotated: Callable[[], None] | None = None,
    poll_seconds: float = 1.0, stopped: Callable[[], str | None] = lambda: None,
) -> None:
    """Play the annotation team until `rounds` rounds are done (the scheduler advances them meanwhile);
    `on_annotated` is called after each batch of verifications, e.g. to run the scheduler at once;
    a non-None `stopped()` (the scheduler's permanent error) ends the wait at once.

    Raises LabelloopError when the rounds are not done within `timeout` seconds."""
    rng = np.random.default_rng(seed)
    annotated: set = set()
    deadline = time.monotonic() + timeout
    while sum(r["state"] == "done" for r in ctx.ledger.rounds()) < rounds:
        if stopped() is not None:
            return
        if time.monotonic() >= deadline:
            raise LabelloopError(f"demo: {rounds} rounds did not complete within {timeout:.0f} s")
        team = ctx.settings.team.overlap
        if annotate_pending(ctx, rng, done=annotated, people=team, skip_one=team > 1) and on_annotated is not None:
            on_annotated()
        time.sleep(poll_seconds)  # people take their time; the scheduler polls Label Studio meanwhile
