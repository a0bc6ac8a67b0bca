"""The project manager's facts: progress, verdicts, coverage, throughput, cost and learner quality.

Pure functions over the ledger returning plain dicts and lists (JSON-ready), shared by
`labelloop status` and the dashboard so both always show the same numbers. Verdicts count the
latest annotation in force of each item; annotators appear only as salted-hash ids.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

from loop import team
from loop.ledger import Ledger

REJECT_THRESHOLD = 0.3  # a cluster whose teacher drafts are rejected more often than this is flagged
MIN_VERIFIED = 5  # ... once at least this many of its items are verified (fewer is noise)
# A rate per hour is given only over at least this many annotations spread over at least this long:
# below that one fast or slow task decides it, and one annotation in 26 microseconds read 138,461,538/h.
MIN_RATE_ANNOTATIONS = 3
MIN_RATE_SPAN_S = 600.0


def anonymise(annotator: str | None, salt: str) -> str | None:
    """A stable, salted id for an annotator (never the email): 'ann-' + 10 hex digits."""
    if annotator is None:
        return None
    return "ann-" + hashlib.sha256(f"{salt}\x00{annotator}".encode()).hexdigest()[:10]


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 timestamp (Label Studio's or the ledger's) as an aware UTC datetime; None if absent."""
    if not value:
        return None
    stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def per_hour(count: int, span_s: float) -> float | None:
    """`count` annotations over `span_s` seconds as a rate per hour, or None when too few or too short a
    span to mean anything (MIN_RATE_ANNOTATIONS, MIN_RATE_SPAN_S)."""
    if count < MIN_RATE_ANNOTATIONS or span_s < MIN_RATE_SPAN_S:
        return None
    return count * 3600 / span_s


def _verdicts(row: dict) -> dict:
    """Counts plus accept/edit/reject rates over the verified items of a row."""
    verified = row["verified"]
    return {
        **row,
        "accept_rate": _rate(row["accept"], verified),
        "edit_rate": _rate(row["edit"], verified),
        "reject_rate": _rate(row["reject"], verified),
    }


COUNTS = ("selected", "failed", "imported", "verified", "skipped", "returned", "remaining", "adjudicate", "accept",
          "edit", "reject")


def cluster_rows(ledger: Ledger, quota: int = 1) -> list[dict]:
    """Per round and cluster: selected, imported, verified (decided under the team's rule), awaiting
    adjudication, skipped (every assigned annotator skipped), returned to the pool, remaining (still
    waited for), the decided verdicts and their rates, skip rate."""
    tallies: dict[tuple, list[dict]] = defaultdict(list)
    for t in ledger.item_tallies():
        tallies[(t["round_id"], t["cluster"])].append(t)
    decided: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (round_id, _), (item, decision) in ledger.decisions().items():
        verdicts = decided[(round_id, item["cluster"])]
        verdicts[decision.verdict if decision.status == "decided" else decision.status] += 1
    out = []
    for r in ledger.cluster_progress():
        row = {k: int(r[k] or 0) for k in ("selected", "failed", "imported")}
        verdicts = decided[(r["round_id"], r["cluster"])]
        row.update({v: verdicts[v] for v in ("accept", "edit", "reject", "adjudicate")})
        row["verified"] = row["accept"] + row["edit"] + row["reject"]
        counts = team.tally(tallies.get((r["round_id"], r["cluster"]), []), quota)
        row = {"round": r["round_id"], "cluster": r["cluster"], "clustering": r["clustering"], **row,
               "skipped": counts["skipped"], "returned": counts["returned"], "remaining": counts["open"]}
        out.append({**_verdicts(row), "skip_rate": _rate(row["skipped"], row["imported"])})
    return out


def round_rows(ledger: Ledger, clusters: list[dict]) -> list[dict]:
    """Per round: state, why it closed, strategy, learner, teacher, and the sums of its clusters' counts;
    `lookahead` marks an open round opened while an older one is still open (it closes after that one)."""
    out = []
    head = min((r["id"] for r in ledger.open_rounds()), default=None)
    for r in ledger.rounds():
        mine = [c for c in clusters if c["round"] == r["id"]]
        sums = {k: sum(c[k] for c in mine) for k in COUNTS}
        out.append({**_verdicts({
            "round": r["id"], "state": r["state"], "closed": r.get("closed_reason"), "deadline": r.get("deadline_at"),
            "lookahead": head is not None and r["id"] > head and r["state"] != "done",
            "strategy": r["strategy"],
            "budget": r["budget"], "learner_version": r["learner_version"],
            "teacher": ledger.find_meta(f"round:{r['id']}:model_version"), "error": r["error"],
            "created_at": r["created_at"], "updated_at": r["updated_at"], **sums,
        }), "skip_rate": _rate(sums["skipped"], sums["imported"])})
    return out


def teacher_fit(clusters: list[dict], threshold: float = REJECT_THRESHOLD,
                min_verified: int = MIN_VERIFIED, clustering: int | None = None) -> list[dict]:
    """The teacher's rejection rate per cluster over all rounds, flagged above `threshold`: the paper's
    failure signature (the teacher does not suit that region of the data). With `clustering`, only the
    rounds selected under that clustering version count: under another, an id names another region."""
    totals: dict[int, dict] = defaultdict(lambda: {"verified": 0, "reject": 0})
    for c in clusters:
        if clustering is not None and c.get("clustering") not in (clustering, None):
            continue
        totals[c["cluster"]]["verified"] += c["verified"]
        totals[c["cluster"]]["reject"] += c["reject"]
    out = []
    for cluster in sorted(totals):
        t = totals[cluster]
        rate = _rate(t["reject"], t["verified"])
        flagged = rate is not None and t["verified"] >= min_verified and rate > threshold
        out.append({"cluster": cluster, **t, "reject_rate": rate, "flagged": flagged})
    return out


def coverage(ledger: Ledger) -> dict:
    """Cluster sizes and how much of each cluster and each subgroup the labeled set covers."""
    rows = ledger.coverage()

    def fold(key: str) -> list[dict]:
        acc: dict[Any, dict] = {}
        for r in rows:
            a = acc.setdefault(r[key], {key: r[key], "pool": 0, "selected": 0, "labeled": 0})
            for k in ("pool", "selected", "labeled"):
                a[k] += r[k]
        ordered = sorted(acc.values(), key=lambda a: (a[key] is None, a[key] if a[key] is not None else 0))
        return [{**a, "coverage": _rate(a["labeled"], a["pool"])} for a in ordered]

    subgroups = fold("subgroup") if any(r["subgroup"] is not None for r in rows) else []
    return {"clusters": fold("cluster"), "subgroups": subgroups}


def annotators(ledger: Ledger) -> dict:
    """Throughput per (anonymised) annotator and overall: annotations, skips, median lead time, and per
    hour of wall-clock time between their first and last annotation (only over a span that means it)."""
    salt = ledger.annotator_salt()
    rows = ledger.annotation_times()
    by: dict[str | None, list[dict]] = defaultdict(list)
    for r in rows:
        by[anonymise(r["annotator"], salt)].append(r)

    def summary(items: list[dict]) -> dict:
        leads = [r["lead_time"] for r in items if r["lead_time"] is not None]
        starts = [parse_time(r["created_at"] or r["updated_at"]) for r in items]
        ends = [parse_time(r["updated_at"] or r["created_at"]) for r in items]
        starts, ends = [s for s in starts if s], [e for e in ends if e]
        span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
        rate = per_hour(len(items), span)
        return {
            "annotations": len(items),
            "median_lead_time_s": round(statistics.median(leads), 2) if leads else None,
            "per_hour": round(rate, 2) if rate is not None else None,
        }

    skips: dict[str | None, int] = defaultdict(int)
    for k in ledger.skips():
        skips[anonymise(k["annotator"], salt)] += 1
    people = [{"annotator": who, **summary(by.get(who, [])), "skips": skips.get(who, 0)}
              for who in {*by, *skips}]
    people.sort(key=lambda p: (-p["annotations"], -p["skips"], p["annotator"] or ""))
    return {"annotators": people, "overall": {**summary(rows), "skips": sum(skips.values())}}


def agreement(ledger: Ledger, adjudicators: list[str]) -> dict:
    """Krippendorff's alpha on verdicts per round, per cluster and per (anonymised) annotator pair, over
    the tasks two or more people verified; None where undefined (no such task, or one verdict only)."""
    salt = ledger.annotator_salt()
    leads = {a.lower() for a in adjudicators}
    items = [{"round_id": it["round_id"], "cluster": it["cluster"],
              "rows": [{**r, "annotator": r["annotator"] if (r["annotator"] or "").lower() in leads
                        else anonymise(r["annotator"], salt)} for r in it["rows"]]}
             for it in ledger.item_votes()]
    return team.agreement(items, adjudicators)


def adjudication(ledger: Ledger) -> list[dict]:
    """The tasks awaiting a lead's verdict (a tie or a split), oldest round first, with a link to each task
    in Label Studio (when the loop has recorded where it is)."""
    where = ledger.find_meta("studio_project_url")
    out = []
    for (round_id, pool_id), (item, decision) in sorted(ledger.decisions().items()):
        if decision.status == "adjudicate":
            out.append({"round": round_id, "pool_id": pool_id, "cluster": item["cluster"], "task_id": item["task_id"],
                        "votes": team.votes_text(decision.votes), "voters": decision.voters,
                        "link": f"{where}/data?task={item['task_id']}" if where else None})
    return out


def estimate(ledger: Ledger, round_row: dict | None, now: datetime) -> dict | None:
    """When the current round's batch completes at the pace seen so far in this round (None when
    there is no open batch or no pace yet)."""
    if round_row is None or round_row["state"] not in ("imported", "verifying"):
        return None
    mine = [r for r in ledger.annotation_times() if r["round_id"] == round_row["round"]]
    remaining = round_row["remaining"]
    if remaining == 0:
        return {"remaining": 0, "per_hour": None, "eta": now.isoformat(timespec="seconds"), "hours_left": 0.0}
    starts = [t for r in mine if (t := parse_time(r["created_at"] or r["updated_at"]))]
    ends = [t for r in mine if (t := parse_time(r["updated_at"] or r["created_at"]))]
    rate = per_hour(len(mine), (max(ends) - min(starts)).total_seconds()) if starts and ends else None
    if rate is None:
        return {"remaining": remaining, "per_hour": None, "eta": None, "hours_left": None}
    hours_left = remaining / rate
    return {"remaining": remaining, "per_hour": round(rate, 2), "hours_left": round(hours_left, 2),
            "eta": (now + timedelta(hours=hours_left)).isoformat(timespec="seconds")}


def learners(ledger: Ledger) -> list[dict]:
    """Learner versions in creation order with their metrics and gate status; `current` marks the one in use."""
    current = (ledger.find_current_model() or {}).get("version")
    return [
        {"version": v["version"], "parent": v["parent"], "round": v["round_id"], "pairs": v["pairs"],
         "metrics": v["metrics"], "status": v.get("status"), "note": v.get("note"),
         "current": v["version"] == current,
         "created_at": v["created_at"]}
        for v in ledger.model_versions()
    ]


def teacher(ledger: Ledger, rounds: list[dict]) -> dict:
    """The teacher's calls, failures, tokens and cost, in all and per round (from the ledger's usage)."""
    return {"total": ledger.teacher_usage(), "rounds": {r["round"]: ledger.teacher_usage(r["round"]) for r in rounds}}


def _clustering_version(ledger: Ledger) -> int | None:
    """The current clustering version, or None before the pool was clustered."""
    current = ledger.find_clustering_version()
    return current["version"] if current else None


def facts(ledger: Ledger, *, now: datetime | None = None, reject_threshold: float = REJECT_THRESHOLD,
          min_verified: int = MIN_VERIFIED) -> dict:
    """Everything `labelloop status` and the dashboard show, as one JSON-ready dict."""
    now = now or datetime.now(timezone.utc)
    quota, adjudicators = ledger.team_rule()
    clusters = cluster_rows(ledger, quota)
    rounds = round_rows(ledger, clusters)
    # the round being verified (the oldest open one); look-ahead rounds come after it
    current = next((r for r in rounds if r["state"] != "done"), rounds[-1] if rounds else None)
    from loop.scorer import contribution_rows

    return {
        "generated_at": now.isoformat(timespec="seconds"),
        "pool": {"items": ledger.pool_count(), "never_sent": len(ledger.unsent_pool_ids())},
        "current": current,
        "lookahead": [r for r in rounds if r["lookahead"]],
        "estimate": estimate(ledger, current, now),
        "rounds": rounds,
        "clusters": clusters,
        "teacher_fit": teacher_fit(clusters, reject_threshold, min_verified, _clustering_version(ledger)),
        "reject_threshold": reject_threshold,
        "coverage": coverage(ledger),
        "annotation": annotators(ledger),
        "team": {"overlap": quota, "adjudicators": len(adjudicators)},
        "agreement": agreement(ledger, adjudicators),
        "adjudication": adjudication(ledger),
        "teacher": teacher(ledger, rounds),
        "learners": learners(ledger),
        "r_attributes": contribution_rows(ledger),  # a several-attribute R: each attribute's share per round
    }
