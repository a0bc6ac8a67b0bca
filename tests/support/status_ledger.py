"""A ledger with two rounds of known data, built by the status, dashboard and export tests.

Round 1 is done (learner v1 trained on it); round 2 is being verified, one item still open and
one teacher failure. Cluster 1's drafts are mostly rejected: the teacher-misfit signature.
"""

from __future__ import annotations

from pathlib import Path

from loop.ledger import Ledger
from loop.teacher import Draft

# pool id -> cluster; ids 13 and 14 are never sent. Subgroup: odd ids "a", even ids "b".
CLUSTER = {**{i: 0 for i in range(1, 7)}, **{i: 1 for i in range(7, 13)}, 13: 0, 14: 1}
ROUND1 = [1, 2, 3, 7, 8, 9]
ROUND2 = [4, 5, 6, 10, 11, 12]
FAILED = 12  # the teacher gave up on this one: never imported
# (annotation id, pool id, verdict, annotator, lead time s, created, updated)
ANNOTATIONS = [
    (1, 1, "accept", "alice@example.org", 10, "2026-03-01T09:00:00Z", "2026-03-01T09:00:10Z"),
    (2, 2, "accept", "alice@example.org", 20, "2026-03-01T09:10:00Z", "2026-03-01T09:10:20Z"),
    (3, 3, "edit", "bob@example.org", 40, "2026-03-01T09:20:00Z", "2026-03-01T09:20:40Z"),
    (4, 7, "reject", "bob@example.org", 30, "2026-03-01T09:30:00Z", "2026-03-01T09:30:30Z"),
    (5, 8, "reject", "alice@example.org", 15, "2026-03-01T09:40:00Z", "2026-03-01T09:40:15Z"),
    (6, 9, "accept", "alice@example.org", 12, "2026-03-01T09:50:00Z", "2026-03-01T09:50:12Z"),
    (7, 9, "edit", "bob@example.org", 50, "2026-03-01T10:00:00Z", "2026-03-01T10:00:50Z"),  # supersedes 6
    (8, 4, "accept", "alice@example.org", 10, "2026-03-02T10:00:00Z", "2026-03-02T10:00:10Z"),
    (9, 5, "edit", "bob@example.org", 60, "2026-03-02T10:20:00Z", "2026-03-02T10:21:00Z"),
    (10, 10, "reject", "alice@example.org", 20, "2026-03-02T10:40:00Z", "2026-03-02T10:40:20Z"),
    (11, 11, "reject", "bob@example.org", 30, "2026-03-02T10:59:30Z", "2026-03-02T11:00:00Z"),
]
TEACHER = "gpt-4o|style_transfer@2"


def draft(pool_id: int) -> str:
    """The teacher's draft for a pool item."""
    return f"polite rewrite {pool_id}"


def target(pool_id: int, verdict: str) -> str | None:
    """What the annotator kept: the draft, an edit of it, or nothing (reject)."""
    return {"accept": draft(pool_id), "edit": f"edited rewrite {pool_id}", "reject": None}[verdict]


def build(path: Path) -> Ledger:
    """The two-round ledger at `path`."""
    ledger = Ledger(path)
    ledger.add_pool([{"text": f"rude sentence {i}", "norm": f"rude sentence {i}", "reference": f"ref {i}",
                      "subgroup": "a" if i % 2 else "b"} for i in sorted(CLUSTER)])
    ledger.put_clusters("test|k=2", sorted(CLUSTER), [CLUSTER[i] for i in sorted(CLUSTER)])
    ledger.add_model_version("v0", path="base", parent=None, round_id=None, pairs=0, metrics={})
    for round_no, (ids, learner) in enumerate([(ROUND1, "v0"), (ROUND2, "v1")], start=1):
        rid = ledger.create_round(strategy="stratified", budget=6, learner_version=learner, items=[
            {"pool_id": i, "cluster": CLUSTER[i], "score": round(0.9 - i / 100, 2), "interim": f"interim {i}"}
            for i in ids])
        assert rid == round_no
        ledger.set_drafts(rid, {i: Draft(f"k{i}", None, "invalid output") if i == FAILED else Draft(f"k{i}", draft(i))
                                for i in ids})
        ledger.set_task_ids(rid, {i: 100 + i for i in ids if i != FAILED})
        ledger.set_meta(f"round:{rid}:model_version", TEACHER)
        calls = [{"round_id": rid, "pool_id": i, "key": f"k{i}", "model": "gpt-4o", "attempt": 1,
                  "status": "ok", "final": 1, "prompt_tokens": 100, "completion_tokens": 20, "cost": 0.001}
                 for i in ids if i != FAILED]
        if FAILED in ids:
            calls += [{"round_id": rid, "pool_id": FAILED, "key": f"k{FAILED}", "model": "gpt-4o", "attempt": a,
                       "status": s, "final": int(s == "failed"), "prompt_tokens": 100, "cost": 0.0005}
                      for a, s in ((1, "retry"), (2, "failed"))]
        ledger.record_teacher_calls(calls)
        if round_no == 1:
            ledger.set_round_state(rid, "done")
    ledger.add_model_version("v1", path="models/v1", parent="v0", round_id=1, pairs=4,
                             metrics={"train_loss": 0.52, "task_score": 0.61})
    ledger.set_round_state(2, "verifying")
    round_of = {i: 1 for i in ROUND1} | {i: 2 for i in ROUND2}
    rows = [{"annotation_id": a, "task_id": 100 + p, "round_id": round_of[p], "pool_id": p, "verdict": v,
             "target": target(p, v), "draft": draft(p), "comment": None, "annotator": who, "updated_at": upd,
             "lead_time": lead, "created_at": created}
            for a, p, v, who, lead, created, upd in ANNOTATIONS]
    ledger.record_verifications(rows)
    return ledger
