"""The rules of an annotation team's work, as plain functions over the ledger's rows: when a task is
settled, when a round can close, what a skip policy acts on, how several people's verdicts decide a task
(majority, ties to adjudication) and how much they agree (Krippendorff's alpha).

A task wants `quota` people (Label Studio's overlap). Everyone assigned it acts by a verdict or a skip,
so a task is settled once its voters and skippers together reach the quota; a task settled by skips
alone is skipped. With one annotator (or Label Studio's default of re-queueing a skipped task for others
only) a skipped task would otherwise wait forever.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

from loop.vocab import VERDICTS


def is_settled(votes: int, skips: int, quota: int) -> bool:
    """Whether everyone a task was assigned to has acted on it (a verdict or a skip)."""
    return votes + skips >= quota


def tally(items: Iterable[dict], quota: int = 1) -> dict:
    """Counts over item tallies (`Ledger.item_tallies`): imported, settled, verified (settled with a
    verdict at least), skipped (settled by skips only), open (still waited for) and returned (to the pool)."""
    out = {"imported": 0, "verified": 0, "skipped": 0, "settled": 0, "open": 0, "returned": 0}
    for it in items:
        votes, skips = int(it["votes"] or 0), int(it["skips"] or 0)
        settled = is_settled(votes, skips, quota)
        out["imported"] += 1
        out["verified"] += settled and votes > 0
        out["skipped"] += settled and votes == 0
        out["settled"] += settled
        out["open"] += not settled
        out["returned"] += it.get("returned_at") is not None
    return out


def skipped_items(items: Iterable[dict]) -> list[int]:
    """Pool ids of the items that have skips and no verdict: what a skip policy acts on at a round's close."""
    return [int(it["pool_id"]) for it in items if not it["votes"] and it["skips"]]


# --- overlap: one verdict per task out of several people's ----------------------------------------------
@dataclass(frozen=True)
class Decision:
    """What a task's annotations decide. `status`: `decided` (a verdict and target), `adjudicate` (a tie or
    a split: a lead must settle it), `open` (fewer people acted than the quota) or `skipped`."""

    status: str
    verdict: str | None
    target: str | None
    votes: dict[str, int]  # verdict -> people (adjudicators left out)
    voters: int
    adjudicated: bool = False


def _latest_per_person(rows: Iterable[dict]) -> dict[str, dict]:
    """One vote per person: their newest annotation in force (by Label Studio's id, which grows with
    creation; an unknown annotator counts per annotation)."""
    latest: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["annotation_id"]):
        latest[r["annotator"] or f"#{r['annotation_id']}"] = r
    return latest


def decide(rows: list[dict], skips: int = 0, quota: int = 1, adjudicators: Iterable[str] = ()) -> Decision:
    """A task's verdict and target from its verifications in force (`rows`: annotator, verdict, target,
    annotation_id, updated_at) and how many people skipped it.

    The rule: an adjudicator's latest annotation decides outright. Otherwise, once everyone assigned has
    acted (verdicts + skips reach `quota`), the majority verdict of one vote per person wins; a tie (2
    people who disagree, or an accept/edit/reject split of 3) goes to adjudication. With a quota of 1 the
    latest verdict decides, as a single annotator's correction would. The target is the adjudicator's,
    else the latest text among the majority's votes (the newest edit for `edit`, the draft for `accept`);
    a reject has none.
    """
    leads = {a.lower() for a in adjudicators}
    mine = [r for r in rows if (r["annotator"] or "").lower() in leads]
    people = _latest_per_person(r for r in rows if r not in mine)
    votes: dict[str, int] = {}
    for r in people.values():
        votes[r["verdict"]] = votes.get(r["verdict"], 0) + 1
    if mine:
        final = max(mine, key=lambda r: r["annotation_id"])
        target = None if final["verdict"] == "reject" else final["target"]
        return Decision("decided", final["verdict"], target, votes, len(people), adjudicated=True)
    if not people:
        return Decision("skipped" if skips else "open", None, None, votes, 0)
    if not is_settled(len(people), skips, quota):
        return Decision("open", None, None, votes, len(people))
    ordered = sorted(people.values(), key=lambda r: r["annotation_id"])
    if quota == 1:
        winner = ordered[-1]["verdict"]
    else:
        top = max(votes.values())
        leaders = [v for v, n in votes.items() if n == top]
        if len(leaders) > 1:
            return Decision("adjudicate", None, None, votes, len(people))
        winner = leaders[0]
    target = None if winner == "reject" else [r for r in ordered if r["verdict"] == winner][-1]["target"]
    return Decision("decided", winner, target, votes, len(people))


def votes_text(votes: dict[str, int]) -> str:
    """Votes as one stable string for tables and exports: 'accept:2,reject:1' (vocabulary order)."""
    return ",".join(f"{v}:{votes[v]}" for v in VERDICTS if votes.get(v))


# --- agreement ---------------------------------------------------------------------------------------
def alpha(units: Iterable[dict[str, str]]) -> float | None:
    """Krippendorff's alpha (nominal) on verdicts over units, each {person: verdict}; None when no unit
    has two people, or when every vote is the same verdict (agreement is then undefined, not perfect)."""
    import krippendorff  # loaded only where agreement is computed
    import numpy as np

    units = [u for u in units if len(u) >= 2]
    people = sorted({p for u in units for p in u})
    if not units:
        return None
    code = {v: i for i, v in enumerate(VERDICTS)}
    data = np.full((len(people), len(units)), np.nan)
    for j, unit in enumerate(units):
        for person, verdict in unit.items():
            data[people.index(person), j] = code[verdict]
    if len({v for u in units for v in u.values()}) < 2:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        value = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal",
                                   value_domain=list(range(len(VERDICTS))))
    return None if value != value else round(float(value), 4)  # NaN: undefined


def agreement(items: Iterable[dict], adjudicators: Iterable[str] = ()) -> dict:
    """Agreement on verdicts among annotators (adjudicators left out): alpha per round, per cluster and
    per annotator pair, with how many units (tasks two people verified) each rests on. `items`: dicts
    with round_id, cluster and `rows` (the item's verifications in force)."""
    leads = {a.lower() for a in adjudicators}
    units: list[tuple[int, int, dict[str, str]]] = []
    for it in items:
        people = _latest_per_person(r for r in it["rows"] if (r["annotator"] or "").lower() not in leads)
        unit = {p: r["verdict"] for p, r in people.items()}
        if len(unit) >= 2:
            units.append((it["round_id"], it["cluster"], unit))

    def group(key) -> list[dict]:
        keys = sorted({key(u) for u in units})
        return [{"key": k, "units": sum(key(u) == k for u in units), "alpha": alpha(u[2] for u in units if key(u) == k)}
                for k in keys]

    pairs: dict[tuple[str, str], list[dict[str, str]]] = {}
    for _, _, unit in units:
        for a, b in combinations(sorted(unit), 2):
            pairs.setdefault((a, b), []).append({a: unit[a], b: unit[b]})
    return {
        "overall": {"units": len(units), "alpha": alpha(u[2] for u in units)},
        "rounds": [{"round": g["key"], "units": g["units"], "alpha": g["alpha"]} for g in group(lambda u: u[0])],
        "clusters": [{"cluster": g["key"], "units": g["units"], "alpha": g["alpha"]} for g in group(lambda u: u[1])],
        "pairs": [{"pair": list(k), "units": len(v), "alpha": alpha(v),
                   "agree": sum(len(set(u.values())) == 1 for u in v)} for k, v in sorted(pairs.items())],
    }
